//! Time, in the two forms keyward writes it: Unix seconds (session expiry, signing)
//! and RFC 3339 UTC with milliseconds (audit `ts`, record metadata). A leaf: it
//! imports nothing of keyward.

use time::format_description::well_known::Rfc3339;
use time::format_description::BorrowedFormatItem;
use time::OffsetDateTime;

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `unix` seconds as RFC 3339 (`2026-01-01T00:00:00Z`); empty if out of range.
pub fn rfc3339(unix: u64) -> String {
    i64::try_from(unix)
        .ok()
        .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

/// RFC 3339 UTC timestamp with milliseconds (the audit `ts`).
pub fn now_rfc3339() -> String {
    rfc3339_millis(OffsetDateTime::now_utc())
}

/// The timestamp format of audit lines, for `time`'s formatter.
pub const RFC3339_MILLIS_FORMAT: &[BorrowedFormatItem<'_>] = time::macros::format_description!(
    "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
);

/// `YYYY-MM-DDTHH:MM:SS.mmmZ`: the layout of [`rfc3339_millis`], digits zeroed.
pub const RFC3339_MILLIS_TEMPLATE: &[u8; 24] = b"0000-00-00T00:00:00.000Z";

/// `t`'s own date and time (UTC for [`now_rfc3339`]) as
/// `YYYY-MM-DDTHH:MM:SS.mmmZ`, the same text as `time`'s formatter with
/// [`RFC3339_MILLIS_FORMAT`]. The digits are put into a fixed template by hand:
/// this runs for every batch of audit lines, and the generic formatter costs
/// several times more.
pub fn rfc3339_millis(t: OffsetDateTime) -> String {
    let (year, month, day) = t.to_calendar_date();
    // Years outside 0..=9999 need a sign or a fifth digit: leave those to `time`.
    let Some(year) = u32::try_from(year).ok().filter(|y| *y <= 9999) else {
        return t.format(RFC3339_MILLIS_FORMAT).unwrap_or_default();
    };
    let (hour, minute, second, milli) = t.to_hms_milli();
    let mut out = *RFC3339_MILLIS_TEMPLATE;
    put_digits(&mut out[0..4], year);
    put_digits(&mut out[5..7], u32::from(u8::from(month)));
    put_digits(&mut out[8..10], u32::from(day));
    put_digits(&mut out[11..13], u32::from(hour));
    put_digits(&mut out[14..16], u32::from(minute));
    put_digits(&mut out[17..19], u32::from(second));
    put_digits(&mut out[20..23], u32::from(milli));
    // Only ASCII digits went into an ASCII template, so this cannot fail.
    String::from_utf8(out.to_vec()).unwrap_or_default()
}

/// Writes `n` into `slot` in decimal, zero-padded to the slot's width.
fn put_digits(slot: &mut [u8], mut n: u32) {
    for digit in slot.iter_mut().rev() {
        *digit = b'0' + (n % 10) as u8;
        n /= 10;
    }
}
