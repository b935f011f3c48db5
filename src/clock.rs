//! The gateway's wall clock, for the few places that need it outside Redis
//! (hold deadlines are Redis time, decided inside the scripts).

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
