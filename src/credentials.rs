//! systemd credentials (`LoadCredential=`): secrets as files in `$CREDENTIALS_DIRECTORY`.
//!
//! systemd copies each credential into a private directory only the service can read and
//! names it in `$CREDENTIALS_DIRECTORY`. Secrets are read from there, never from environment
//! variables (which `systemctl show` and `/proc/PID/environ` expose).

use std::path::PathBuf;

/// `$CREDENTIALS_DIRECTORY/<name>` when the variable is set and the file exists.
pub fn find(name: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("CREDENTIALS_DIRECTORY")?;
    if dir.is_empty() {
        return None;
    }
    let path = PathBuf::from(dir).join(name);
    path.is_file().then_some(path)
}
