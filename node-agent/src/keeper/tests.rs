use std::io::{Read, Write};
use std::os::fd::OwnedFd;

use super::*;

/// A keeper serving in a thread of this process, in a fresh directory.
struct Running {
    keeper: Keeper,
    serving: Serving,
    _dir: TempDir,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Running {
    fn start(name: &str) -> Running {
        let dir = std::env::temp_dir().join(format!("tartan-keeper-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("keeper.sock");
        Running {
            serving: Serving::start(&path).expect("the keeper listens"),
            keeper: Keeper::at(&path),
            _dir: TempDir(dir),
        }
    }

    fn stop(self) -> Store {
        self.serving.stop().expect("keeper served")
    }
}

fn pipe() -> (OwnedFd, OwnedFd) {
    nix::unistd::pipe().expect("pipe")
}

#[test]
fn what_is_put_comes_back_as_the_same_open_files_after_the_putter_closed_its_own() {
    let running = Running::start("roundtrip");
    assert!(running.keeper.get("tartan0").expect("get").is_none());
    let (read_end, write_end) = pipe();
    running
        .keeper
        .put("tartan0", "v1 port=8472", &[&read_end, &write_end])
        .expect("put");
    // The agent goes away: its own descriptors close.
    drop((read_end, write_end));
    let kept = running.keeper.get("tartan0").expect("get").expect("kept");
    assert_eq!(kept.meta, "v1 port=8472");
    let [read_end, write_end]: [OwnedFd; 2] = kept.fds.try_into().expect("two descriptors");
    std::fs::File::from(write_end)
        .write_all(b"still open")
        .expect("write");
    let mut text = [0u8; 10];
    std::fs::File::from(read_end)
        .read_exact(&mut text)
        .expect("read");
    assert_eq!(&text, b"still open");
    let store = running.stop();
    assert_eq!(store.devices().collect::<Vec<_>>(), ["tartan0"]);
}

#[test]
fn a_put_replaces_and_a_forget_closes_what_was_kept() {
    let running = Running::start("replace");
    let (old_read, old_write) = pipe();
    running
        .keeper
        .put("tartan-wg0", "v1 a", &[&old_write])
        .expect("put");
    drop(old_write);
    let (new_read, new_write) = pipe();
    running
        .keeper
        .put("tartan-wg0", "v1 b", &[&new_write])
        .expect("put");
    let kept = running
        .keeper
        .get("tartan-wg0")
        .expect("get")
        .expect("kept");
    assert_eq!(kept.meta, "v1 b");
    drop(kept);
    // The first pipe's last write end is gone: its reader sees the end.
    let mut rest = Vec::new();
    std::fs::File::from(old_read)
        .read_to_end(&mut rest)
        .expect("read to end");
    assert!(rest.is_empty());
    running.keeper.forget("tartan-wg0").expect("forget");
    assert!(running.keeper.get("tartan-wg0").expect("get").is_none());
    drop(new_write);
    let mut rest = Vec::new();
    std::fs::File::from(new_read)
        .read_to_end(&mut rest)
        .expect("the keeper closed its copy");
    assert!(running.stop().devices().next().is_none());
}

#[test]
fn no_keeper_is_a_connect_error_naming_the_path() {
    let keeper = Keeper::at("/nonexistent/tartan/keeper.sock");
    let error = keeper.get("tartan0").expect_err("nobody listens");
    assert!(matches!(error, KeeperError::Connect { .. }), "{error}");
    assert!(
        error
            .to_string()
            .contains("/nonexistent/tartan/keeper.sock")
    );
}

#[test]
fn a_malformed_request_gets_an_error_reply_and_changes_nothing() {
    let running = Running::start("malformed");
    let (_read, write) = pipe();
    let error = running
        .keeper
        .put("a/b", "v1", &[&write])
        .expect_err("a slash in the name");
    assert!(error.to_string().contains("malformed"), "{error}");
    assert!(running.stop().devices().next().is_none());
}
