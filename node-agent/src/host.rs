//! Facts about the host read from the OS, once, at the binary's edge: the
//! running kernel's version (the planner turns VXLAN checksum offload off
//! before 5.7). The planner and the status are pure and take it as input.

/// The running kernel's (major, minor), from uname; (0, 0) when unreadable.
pub fn kernel_version() -> (u32, u32) {
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    parse_release(&release)
}

/// (major, minor) of a kernel release string such as `6.1.0-18-amd64`.
fn parse_release(release: &str) -> (u32, u32) {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::parse_release;

    #[test]
    fn release_strings_parse() {
        assert_eq!(parse_release("6.1.0-18-amd64"), (6, 1));
        assert_eq!(parse_release("5.6.19"), (5, 6));
        assert_eq!(parse_release("4.19.0+"), (4, 19));
        assert_eq!(parse_release(""), (0, 0));
    }
}
