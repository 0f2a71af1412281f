//! The schedule and the connections: an open-loop schedule of requests at the aggregate
//! rate (`pace`), taken by a pool of HTTP/1.1 keep-alive connections (hyper, `run`),
//! each resending after 429/503 (honouring `Retry-After`) and after connection errors,
//! never dropping a request silently.
//!
//! The schedule does not wait for replies: a request is due once its pings have
//! accumulated at the target rate. When every connection is busy, due requests wait
//! and are sent late; latency is still measured from the time they were due (no
//! coordinated omission), and what is still waiting a second after the run's end is
//! counted as unsent.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::fleet::{BodyFormat, Fleet, Shard, Tripped, Upload};
use super::mix::Mix;
use super::stats::{Clock, Pending, Stats};

/// Where to send and how.
#[derive(Debug)]
pub struct Target {
    pub addr: SocketAddr,
    /// `host:port` for the Host header.
    pub host: String,
    /// Request path, e.g. `/v1/pings`.
    pub path: String,
    /// `Bearer <token>`.
    pub authorization: String,
    pub format: BodyFormat,
    pub gzip: bool,
}

/// Everything the connections share.
#[derive(Debug)]
pub struct Ctx {
    pub fleet: Fleet,
    pub target: Target,
    pub mix: Mix,
    pub stats: Stats,
    pub clock: Clock,
    pub seed: u64,
    /// Pings per second over all connections.
    pub rate: f64,
    pub connections: u32,
    /// End of the schedule, µs after the start.
    pub duration_us: u64,
    /// Requests still retrying are given up at this time, µs after the start.
    pub deadline_us: u64,
    /// Per-attempt reply timeout.
    pub request_timeout: Duration,
    /// Set on a fatal error (401): every connection stops.
    pub abort: AtomicBool,
    pub fatal: std::sync::Mutex<Option<String>>,
}

impl Ctx {
    fn fail(&self, why: String) {
        if let Ok(mut f) = self.fatal.lock()
            && f.is_none()
        {
            *f = Some(why);
        }
        self.abort.store(true, Ordering::Relaxed);
    }

    fn aborted(&self) -> bool {
        self.abort.load(Ordering::Relaxed)
    }
}

/// One request of the schedule: its size, kind and when it is due (µs after the start).
#[derive(Debug, Clone, Copy)]
pub struct Ticket {
    pub pings: u32,
    pub phone: bool,
    pub due_us: u64,
}

/// The requests waiting for a free connection, shared by every connection.
pub type Tickets = Arc<tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<Ticket>>>;

/// How late after the end of the schedule a request may still be sent; later ones are
/// counted as unsent (the run could not keep up).
const END_GRACE_US: u64 = 1_000_000;

/// The schedule: one ticket per request, due once its pings have accumulated at the
/// aggregate rate, handed to whichever connection is free. Never waits for replies.
pub async fn pace(ctx: Arc<Ctx>, tx: tokio::sync::mpsc::UnboundedSender<Ticket>) {
    let mut rng = leasewatch_load::r#gen::rng::Rng::new(ctx.seed, super::fleet::PACE_STREAM);
    let mut due_us = 0f64;
    while !ctx.aborted() {
        let (entry, n) = ctx.mix.draw(&mut rng);
        due_us += f64::from(n) / ctx.rate * 1e6;
        let due = due_us as u64;
        if due >= ctx.duration_us {
            break;
        }
        if due > ctx.clock.elapsed_us() {
            tokio::time::sleep_until(ctx.clock.instant(due).into()).await;
        }
        let ticket = Ticket {
            pings: n,
            phone: entry.is_phone(),
            due_us: due,
        };
        if tx.send(ticket).is_err() {
            break;
        }
    }
}

/// Runs connection `index`: takes due requests until the schedule ends, builds each
/// from its own devices, and sends it until it is answered (or given up).
pub async fn run(ctx: Arc<Ctx>, index: u32, tickets: Tickets) {
    let mut shard = Shard::new(&ctx.fleet, ctx.seed, index, ctx.connections);
    let mut conn: Option<SendRequest<Full<Bytes>>> = None;
    let mut pings = Vec::new();
    let mut tripped: Vec<Tripped> = Vec::new();
    let mut buf = Vec::new();
    loop {
        let next = { tickets.lock().await.recv().await };
        let Some(ticket) = next else { break };
        if ctx.aborted() || shard.len() == 0 {
            Stats::add(&ctx.stats.pings_scheduled, u64::from(ticket.pings));
            Stats::add(&ctx.stats.pings_unsent, u64::from(ticket.pings));
            continue;
        }
        let due_us = ticket.due_us;
        let now = ctx.clock.elapsed_us();
        ctx.stats
            .max_behind_us
            .fetch_max(now.saturating_sub(due_us), Ordering::Relaxed);
        if now >= ctx.duration_us + END_GRACE_US {
            // Still due when the run ended: not sent.
            Stats::add(&ctx.stats.pings_scheduled, u64::from(ticket.pings));
            Stats::add(&ctx.stats.pings_unsent, u64::from(ticket.pings));
            continue;
        }
        let (n, phone) = (ticket.pings, ticket.phone);
        let t_ms = ctx.clock.unix_us(due_us).div_euclid(1000);
        tripped.clear();
        let request = Upload {
            pings: n,
            phone,
            t_ms,
            rel_ms: due_us / 1000,
        };
        shard.pings(request, &mut pings, &mut tripped);
        let n = pings.len() as u64;
        Stats::add(&ctx.stats.pings_scheduled, n);
        if !tripped.is_empty()
            && let Ok(mut p) = ctx.stats.pending.lock()
        {
            for t in &tripped {
                p.insert(
                    t.device,
                    Pending {
                        sent_unix_us: ctx.clock.unix_us(due_us),
                        event_time: t.event_time,
                        accepted: false,
                        matched: false,
                    },
                );
            }
        }
        let body = match super::fleet::encode(
            &ctx.fleet,
            &pings,
            ctx.target.format,
            ctx.target.gzip,
            &mut buf,
        ) {
            Ok(b) => Bytes::from(b),
            Err(e) => {
                ctx.fail(format!("encoding a request body failed: {e}"));
                continue;
            }
        };
        let accepted = send(&ctx, &mut conn, body, n, due_us).await;
        if accepted
            && !tripped.is_empty()
            && let Ok(mut p) = ctx.stats.pending.lock()
        {
            for t in &tripped {
                if let Some(x) = p.get_mut(&t.device) {
                    x.accepted = true;
                }
            }
        }
    }
}

/// The reply body of ingest (the fields the driver reads).
#[derive(Debug, serde::Deserialize)]
struct Reply {
    #[serde(default)]
    accepted: u64,
    #[serde(default)]
    rejected: Vec<serde::de::IgnoredAny>,
    #[serde(default)]
    error: Option<String>,
}

enum Attempt {
    /// Answered; true when 202.
    Done(bool),
    /// 429/503: wait this long, then resend.
    RetryAfter(Duration),
    /// Connection lost or no reply: reconnect and resend.
    Failed,
}

/// Sends one request until it is answered (other than 429/503), or the drain deadline
/// passes. Returns whether it was accepted.
async fn send(
    ctx: &Ctx,
    conn: &mut Option<SendRequest<Full<Bytes>>>,
    body: Bytes,
    pings: u64,
    due_us: u64,
) -> bool {
    let stats = &ctx.stats;
    let mut first = true;
    let mut backoff = Duration::from_millis(50);
    loop {
        if ctx.aborted() {
            Stats::add(&stats.pings_abandoned, pings);
            return false;
        }
        if ctx.clock.elapsed_us() >= ctx.deadline_us {
            Stats::add(&stats.pings_abandoned, pings);
            return false;
        }
        if conn.as_ref().is_none_or(|c| c.is_closed()) {
            match connect(&ctx.target).await {
                Ok(c) => *conn = Some(c),
                Err(e) => {
                    Stats::add(&stats.errors, 1);
                    stats.error_sample(format!("connect {}: {e}", ctx.target.addr));
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            }
        }
        let Some(sender) = conn.as_mut() else {
            continue;
        };
        if first {
            Stats::add(&stats.pings_sent, pings);
            first = false;
        }
        Stats::add(&stats.requests, 1);
        Stats::add(&stats.bytes_sent, body.len() as u64);
        match attempt(ctx, sender, body.clone(), pings, due_us).await {
            Attempt::Done(ok) => return ok,
            Attempt::RetryAfter(wait) => {
                Stats::add(&stats.retries, 1);
                Stats::add(&stats.retry_wait_ms, wait.as_millis() as u64);
                tokio::time::sleep(wait).await;
            }
            Attempt::Failed => {
                *conn = None;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

async fn attempt(
    ctx: &Ctx,
    sender: &mut SendRequest<Full<Bytes>>,
    body: Bytes,
    pings: u64,
    due_us: u64,
) -> Attempt {
    let stats = &ctx.stats;
    let t = &ctx.target;
    let mut req = Request::post(t.path.as_str())
        .header(header::HOST, t.host.as_str())
        .header(header::AUTHORIZATION, t.authorization.as_str())
        .header(header::CONTENT_TYPE, t.format.content_type());
    if t.gzip {
        req = req.header(header::CONTENT_ENCODING, "gzip");
    }
    let req = match req.body(Full::new(body)) {
        Ok(r) => r,
        Err(e) => {
            ctx.fail(format!("building the request failed: {e}"));
            return Attempt::Done(false);
        }
    };
    let exchange = async {
        sender.ready().await?;
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let bytes = resp.into_body().collect().await?.to_bytes();
        Ok::<_, hyper::Error>((status, retry_after, bytes))
    };
    let (status, retry_after, bytes) =
        match tokio::time::timeout(ctx.request_timeout, exchange).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                Stats::add(&stats.errors, 1);
                stats.error_sample(format!("request: {e}"));
                return Attempt::Failed;
            }
            Err(_) => {
                Stats::add(&stats.timeouts, 1);
                return Attempt::Failed;
            }
        };
    stats.status(status.as_u16());
    let reply: Option<Reply> = serde_json::from_slice(&bytes).ok();
    match status {
        StatusCode::ACCEPTED => {
            let now = ctx.clock.elapsed_us();
            let (accepted, rejected) = reply
                .as_ref()
                .map_or((pings, 0), |r| (r.accepted, r.rejected.len() as u64));
            Stats::add(&stats.pings_accepted, accepted);
            Stats::add(&stats.pings_rejected, rejected);
            if rejected > 0 {
                stats.error_sample(format!(
                    "202 with {rejected} rejected rows: {}",
                    cut(&String::from_utf8_lossy(&bytes), 400)
                ));
            }
            stats.last_accept_us.fetch_max(now, Ordering::Relaxed);
            if let Ok(mut h) = stats.ack.lock() {
                h.record_us(i64::try_from(now.saturating_sub(due_us)).unwrap_or(i64::MAX));
            }
            Attempt::Done(true)
        }
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
            // Retry-After in seconds (HTTP dates are not sent by ingest): 1 s if absent.
            Attempt::RetryAfter(Duration::from_secs(retry_after.unwrap_or(1).clamp(0, 60)))
        }
        StatusCode::UNAUTHORIZED => {
            ctx.fail(format!(
                "401 Unauthorized from {}: check --token ({})",
                t.addr,
                reply.and_then(|r| r.error).unwrap_or_default()
            ));
            Stats::add(&stats.pings_rejected, pings);
            Attempt::Done(false)
        }
        other => {
            Stats::add(&stats.pings_rejected, pings);
            stats.error_sample(format!(
                "{other}: {}",
                cut(&String::from_utf8_lossy(&bytes), 400)
            ));
            Attempt::Done(false)
        }
    }
}

fn cut(s: &str, n: usize) -> String {
    match s.char_indices().nth(n) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

async fn connect(t: &Target) -> Result<SendRequest<Full<Bytes>>, String> {
    let stream = TcpStream::connect(t.addr)
        .await
        .map_err(|e| e.to_string())?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        // Ends when the server closes or the sender is dropped; errors surface on the
        // next request.
        let _ = conn.await;
    });
    Ok(sender)
}

/// `http://host:port[/path]` into the address, the Host header and the path
/// (`/v1/pings` when the URL has none).
pub fn parse_url(url: &str) -> Result<(SocketAddr, String, String), String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        format!("--url {url:?}: expected http://HOST:PORT[/PATH] (https is not supported)")
    })?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let path = if path.is_empty() || path == "/" {
        "/v1/pings".to_string()
    } else {
        path.to_string()
    };
    let with_port = if hostport
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        && !hostport.ends_with(']')
    {
        hostport.to_string()
    } else {
        format!("{hostport}:80")
    };
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&with_port)
        .map_err(|e| format!("--url {url:?}: cannot resolve {hostport}: {e}"))?
        .next()
        .ok_or_else(|| format!("--url {url:?}: {hostport} resolves to no address"))?;
    Ok((addr, hostport.to_string(), path))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let (a, h, p) = parse_url("http://127.0.0.1:8080").unwrap();
        assert_eq!(a.port(), 8080);
        assert_eq!(h, "127.0.0.1:8080");
        assert_eq!(p, "/v1/pings");
        let (_, _, p) = parse_url("http://127.0.0.1:9/custom/path").unwrap();
        assert_eq!(p, "/custom/path");
        let (a, _, _) = parse_url("http://127.0.0.1").unwrap();
        assert_eq!(a.port(), 80);
        assert!(parse_url("https://x:1").is_err());
        assert!(parse_url("127.0.0.1:8080").is_err());
    }
}
