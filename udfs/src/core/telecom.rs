//! Telecom identifiers: Luhn check digits (IMEI, ICCID), the home MCC of an IMSI, and the
//! country of a mobile country code.
//!
//! Pasted verbatim into the Arroyo UDF sources together with `mcc_table.rs`: depends only
//! on `std` and its sibling `super::mcc_table`.

use super::mcc_table::MCC_COUNTRIES;

/// Whether `digits` is all ASCII digits (at least two) and passes the Luhn check, the last
/// digit being the check digit.
///
/// ```
/// use leasewatch_udfs::core::telecom::luhn_valid;
/// assert!(luhn_valid("79927398713"));
/// assert!(!luhn_valid("79927398710"));
/// assert!(!luhn_valid("7992739871x"));
/// ```
#[inline]
#[allow(clippy::manual_is_multiple_of)] // stays buildable by older toolchains on Arroyo
pub fn luhn_valid(digits: &str) -> bool {
    let bytes = digits.as_bytes();
    if bytes.len() < 2 {
        return false;
    }
    let mut sum = 0_u32;
    for (i, &b) in bytes.iter().rev().enumerate() {
        if !b.is_ascii_digit() {
            return false;
        }
        let d = u32::from(b - b'0');
        sum += if i % 2 == 1 {
            let doubled = d * 2;
            if doubled > 9 { doubled - 9 } else { doubled }
        } else {
            d
        };
    }
    sum % 10 == 0
}

/// Whether `imei` is a valid IMEI: exactly 15 digits with a correct Luhn check digit.
///
/// ```
/// use leasewatch_udfs::core::telecom::imei_valid;
/// assert!(imei_valid("490154203237518"));
/// assert!(!imei_valid("490154203237517"));
/// assert!(!imei_valid("49015420323751"));
/// ```
#[inline]
pub fn imei_valid(imei: &str) -> bool {
    imei.len() == 15 && luhn_valid(imei)
}

/// Whether `iccid` is a valid SIM ICCID (ITU-T E.118): 18 to 22 digits, starting with the
/// telecom industry prefix `89`, with a correct Luhn check digit last.
///
/// ```
/// use leasewatch_udfs::core::telecom::iccid_valid;
/// assert!(iccid_valid("8931440400012345672"));
/// assert!(!iccid_valid("8931440400012345670"));
/// assert!(!iccid_valid("1234567890123456782"));
/// ```
#[inline]
pub fn iccid_valid(iccid: &str) -> bool {
    (18..=22).contains(&iccid.len()) && iccid.starts_with("89") && luhn_valid(iccid)
}

/// The home mobile country code of an IMSI (its first three digits), or `None` unless the
/// IMSI is 6 to 15 ASCII digits.
///
/// ```
/// use leasewatch_udfs::core::telecom::imsi_mcc;
/// assert_eq!(imsi_mcc("310150123456789"), Some(310));
/// assert_eq!(imsi_mcc("00101"), None);
/// ```
#[inline]
pub fn imsi_mcc(imsi: &str) -> Option<u16> {
    let b = imsi.as_bytes();
    if !(6..=15).contains(&b.len()) || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(u16::from(b[0] - b'0') * 100 + u16::from(b[1] - b'0') * 10 + u16::from(b[2] - b'0'))
}

/// ISO 3166-1 alpha-2 code of the country (or territory) a mobile country code belongs to
/// (ITU-T E.212), or `None` for codes not assigned to one (test networks `001`,
/// international `901`, unassigned codes, out of range).
///
/// ```
/// use leasewatch_udfs::core::telecom::mcc_country;
/// assert_eq!(mcc_country(234), Some("GB"));
/// assert_eq!(mcc_country(311), Some("US"));
/// assert_eq!(mcc_country(901), None);
/// assert_eq!(mcc_country(-1), None);
/// ```
#[inline]
pub fn mcc_country(mcc: i64) -> Option<&'static str> {
    let mcc = u16::try_from(mcc).ok()?;
    MCC_COUNTRIES
        .binary_search_by_key(&mcc, |&(code, _)| code)
        .ok()
        .and_then(|i| MCC_COUNTRIES.get(i))
        .map(|&(_, country)| country)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_unique_and_well_formed() {
        assert!(MCC_COUNTRIES.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(MCC_COUNTRIES.len() >= 235, "{}", MCC_COUNTRIES.len());
        for &(mcc, cc) in MCC_COUNTRIES {
            assert!((200..1000).contains(&mcc), "{mcc}");
            assert!(
                cc.len() == 2 && cc.bytes().all(|b| b.is_ascii_uppercase()),
                "{cc}"
            );
        }
    }

    #[test]
    fn well_known_codes() {
        for (mcc, cc) in [
            (208, "FR"),
            (262, "DE"),
            (310, "US"),
            (316, "US"),
            (302, "CA"),
            (334, "MX"),
            (404, "IN"),
            (405, "IN"),
            (440, "JP"),
            (460, "CN"),
            (505, "AU"),
            (621, "NG"),
            (639, "KE"),
            (655, "ZA"),
            (724, "BR"),
            (722, "AR"),
            (250, "RU"),
            (286, "TR"),
        ] {
            assert_eq!(mcc_country(mcc), Some(cc), "{mcc}");
        }
        assert_eq!(mcc_country(1), None);
        assert_eq!(mcc_country(999), None);
        assert_eq!(mcc_country(i64::MAX), None);
    }

    #[test]
    fn identifiers_at_edges() {
        assert!(!luhn_valid(""));
        assert!(!luhn_valid("0"));
        assert!(luhn_valid("00"));
        assert!(!imei_valid(""));
        assert!(!imei_valid("49015420323751é"));
        assert!(!imei_valid(" 490154203237518"));
        assert!(iccid_valid("89014103211118510720"));
        assert!(!iccid_valid("890141032111185107"));
        assert_eq!(imsi_mcc("2341"), None);
        assert_eq!(imsi_mcc("23415123456789012"), None);
        assert_eq!(imsi_mcc("234-15123456789"), None);
        assert_eq!(imsi_mcc("001010000000001"), Some(1));
    }
}
