//! The `tartan-echo` binary itself, as the test images run it: serve, then
//! probe it over TCP and UDP and run a short flow against it. (Being an
//! integration test of this crate also makes `cargo test --workspace` build
//! the binary that tests/images/build.sh packs.)

use std::net::{TcpListener, UdpSocket};
use std::process::{Command, Stdio};
use std::time::Duration;

const ECHO: &str = env!("CARGO_BIN_EXE_tartan-echo");

fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(ECHO)
        .args(args)
        .output()
        .expect("run tartan-echo");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn the_binary_serves_answers_probes_and_counts_a_flow() {
    let tcp = TcpListener::bind("127.0.0.1:0")
        .expect("a free port")
        .local_addr()
        .expect("addr")
        .port();
    let udp = UdpSocket::bind("127.0.0.1:0")
        .expect("a free port")
        .local_addr()
        .expect("addr")
        .port();
    let mut server = Command::new(ECHO)
        .args([
            "serve",
            "--tcp",
            &tcp.to_string(),
            "--udp",
            &udp.to_string(),
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("serve");
    std::thread::sleep(Duration::from_millis(300));
    let (ok, answer) = run(&["probe", "tcp", &format!("127.0.0.1:{tcp}")]);
    assert!(
        ok && answer.starts_with("tartan-echo "),
        "tcp probe: {answer:?}"
    );
    let (ok, answer) = run(&["probe", "udp", &format!("127.0.0.1:{udp}")]);
    assert!(ok, "udp probe: {answer:?}");
    let (ok, report) = run(&[
        "flow",
        "udp",
        &format!("127.0.0.1:{udp}"),
        "--rate",
        "50",
        "--seconds",
        "1",
    ]);
    assert!(ok, "flow: {report:?}");
    assert!(
        report.trim_end().ends_with("sent 50 received 50 lost 0"),
        "{report:?}"
    );
    let _ = server.kill();
    let _ = server.wait();
    let (ok, _) = run(&["probe", "tcp", &format!("127.0.0.1:{tcp}")]);
    assert!(!ok, "a probe with nothing listening fails");
}
