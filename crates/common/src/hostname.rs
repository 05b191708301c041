//! Node ids from a StatefulSet pod's hostname: Kubernetes names the pods of a StatefulSet
//! `NAME-0`, `NAME-1`, ..., so the trailing ordinal is a stable id that survives restarts and
//! rescheduling (`--node-id-from-hostname`, `--broker-id-from-hostname`).

/// The ordinal at the end of `hostname` (`tideline-broker-2` -> 2; a fully qualified name is
/// cut at its first dot).
///
/// # Errors
/// A message naming the hostname when it does not end in `-N`.
pub fn ordinal_of(hostname: &str) -> Result<u64, String> {
    let host = hostname.trim();
    let short = host.split('.').next().unwrap_or(host);
    short
        .rsplit_once('-')
        .and_then(|(name, n)| {
            (!name.is_empty() && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                .then(|| n.parse().ok())
                .flatten()
        })
        .ok_or_else(|| format!("hostname {host:?} does not end in -N (a StatefulSet pod ordinal)"))
}

/// The ordinal for an option that takes an id from the hostname (`flag`, e.g.
/// `--broker-id-from-hostname`): a failure to read `hostname` or to find its ordinal is one
/// message naming the option.
///
/// # Errors
/// That message.
pub fn ordinal_for(flag: &str, hostname: Result<String, String>) -> Result<u64, String> {
    hostname.and_then(|h| ordinal_of(&h)).map_err(|e| format!("{flag}: {e}"))
}

/// This machine's hostname: `/proc/sys/kernel/hostname`, else `$HOSTNAME`.
///
/// # Errors
/// A message when neither is readable.
pub fn own_hostname() -> Result<String, String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .map_err(|_| "cannot read the hostname (/proc/sys/kernel/hostname, $HOSTNAME)".into())
}

/// The ordinal at the end of this machine's hostname (see [`ordinal_of`]).
///
/// # Errors
/// As [`own_hostname`] and [`ordinal_of`].
pub fn own_ordinal() -> Result<u64, String> {
    ordinal_of(&own_hostname()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinals_come_from_the_last_dash() {
        assert_eq!(ordinal_of("tideline-broker-2"), Ok(2));
        assert_eq!(ordinal_of("tideline-controller-0.tideline-controller.ns.svc"), Ok(0));
        assert_eq!(ordinal_of(" web-17\n"), Ok(17));
        for bad in
            ["tideline", "broker-", "-3", "broker-x1", "broker-1a", "", "b-99999999999999999999"]
        {
            let e = ordinal_of(bad).unwrap_err();
            assert!(e.contains("does not end in -N"), "{bad}: {e}");
        }
    }
}
