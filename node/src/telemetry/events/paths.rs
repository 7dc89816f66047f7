//! The sensitive-file tables: which reads (credential access) and which
//! writes (escape and persistence targets) are security-relevant.

use super::KernelEventKind;

/// Files whose *reads* are security-relevant (credential access).
const READ_SENSITIVE_EXACT: &[&str] = &[
    "/etc/shadow",
    "/etc/gshadow",
    "/etc/shadow-",
    "/etc/gshadow-",
    "/etc/sudoers",
    "/etc/master.passwd",
    "/etc/kubernetes/admin.conf",
    "/etc/kubernetes/kubelet.conf",
    "/var/lib/kubelet/kubeconfig",
];
const READ_SENSITIVE_PREFIX: &[&str] = &[
    "/var/run/secrets/kubernetes.io/serviceaccount/",
    "/run/secrets/kubernetes.io/serviceaccount/",
    "/var/run/secrets/eks.amazonaws.com/",
    "/etc/sudoers.d/",
    "/etc/kubernetes/pki/",
    "/etc/ssh/ssh_host_",
    "/root/.ssh/",
];
const READ_SENSITIVE_CONTAINS: &[&str] = &[
    "/.ssh/id_",
    "/.aws/credentials",
    "/.kube/config",
    "/.docker/config.json",
];
/// Files whose *writes* are security-relevant but reads are not
/// (container-escape and persistence targets).
const WRITE_ONLY_SUFFIX: &[&str] = &[
    "/release_agent",
    "/notify_on_release",
    "/proc/sys/kernel/core_pattern",
    "/proc/sys/kernel/modprobe",
    "/proc/sysrq-trigger",
    "/sys/kernel/uevent_helper",
    "/etc/passwd",
    "/etc/group",
    "/etc/ld.so.preload",
    "/etc/crontab",
    "/.ssh/authorized_keys",
];
const WRITE_ONLY_PREFIX: &[&str] = &["/etc/cron.d/", "/var/spool/cron/"];

fn is_read_sensitive(path: &str) -> bool {
    READ_SENSITIVE_EXACT.contains(&path)
        || READ_SENSITIVE_PREFIX.iter().any(|p| path.starts_with(p))
        || READ_SENSITIVE_CONTAINS.iter().any(|p| path.contains(p))
        || (path.starts_with("/proc/") && path.ends_with("/environ"))
}

fn is_write_target(path: &str) -> bool {
    WRITE_ONLY_SUFFIX.iter().any(|p| path.ends_with(p))
        || WRITE_ONLY_PREFIX.iter().any(|p| path.starts_with(p))
}

/// Classifies an access to `path` as a sensitive read or write, or `None`
/// if the access is not security-relevant.
///
/// `write` is whether the access writes (`None` when unknown). Reads count
/// for credential files (`/etc/shadow`, service-account tokens, SSH keys,
/// `/proc/*/environ`, ...); writes count for those and for escape or
/// persistence targets (`release_agent`, `core_pattern`, `/etc/passwd`,
/// `authorized_keys`, ...). An unknown direction is a write for the
/// write-only targets and a read otherwise.
pub fn classify_file_access(path: &str, write: Option<bool>) -> Option<KernelEventKind> {
    let read_s = is_read_sensitive(path);
    let write_s = is_write_target(path);
    match write {
        Some(true) if read_s || write_s => Some(KernelEventKind::SensitiveFileWrite),
        Some(false) if read_s => Some(KernelEventKind::SensitiveFileRead),
        None if write_s => Some(KernelEventKind::SensitiveFileWrite),
        None if read_s => Some(KernelEventKind::SensitiveFileRead),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sensitive_files() {
        use KernelEventKind::*;
        assert_eq!(
            classify_file_access("/etc/shadow", Some(false)),
            Some(SensitiveFileRead)
        );
        assert_eq!(
            classify_file_access("/etc/shadow", Some(true)),
            Some(SensitiveFileWrite)
        );
        assert_eq!(classify_file_access("/etc/passwd", Some(false)), None);
        assert_eq!(
            classify_file_access("/etc/passwd", Some(true)),
            Some(SensitiveFileWrite)
        );
        assert_eq!(
            classify_file_access("/sys/fs/cgroup/rdma/release_agent", None),
            Some(SensitiveFileWrite)
        );
        assert_eq!(
            classify_file_access("/var/run/secrets/kubernetes.io/serviceaccount/token", None),
            Some(SensitiveFileRead)
        );
        assert_eq!(
            classify_file_access("/proc/1/environ", None),
            Some(SensitiveFileRead)
        );
        assert_eq!(classify_file_access("/tmp/x", Some(true)), None);
    }
}
