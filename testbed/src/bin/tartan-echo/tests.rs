use super::*;

fn args(line: &str) -> Vec<String> {
    line.split_whitespace().map(String::from).collect()
}

#[test]
fn parses_commands_with_defaults() {
    assert_eq!(
        parse(&args("serve")),
        Ok(Command::Serve {
            tcp: 8080,
            udp: 8081
        })
    );
    assert_eq!(
        parse(&args("serve --tcp 80 --udp=53")),
        Ok(Command::Serve { tcp: 80, udp: 53 })
    );
    assert_eq!(
        parse(&args("probe tcp 10.0.0.1:8080")),
        Ok(Command::Probe {
            proto: Proto::Tcp,
            target: "10.0.0.1:8080".into(),
            timeout: Duration::from_millis(2000),
        })
    );
    assert_eq!(
        parse(&args("probe udp echo.default.svc:8081 --timeout-ms 300")),
        Ok(Command::Probe {
            proto: Proto::Udp,
            target: "echo.default.svc:8081".into(),
            timeout: Duration::from_millis(300),
        })
    );
    assert_eq!(
        parse(&args("flow udp [fd00::1]:8081 --rate 50 --seconds 3")),
        Ok(Command::Flow {
            target: "[fd00::1]:8081".into(),
            rate: 50,
            seconds: 3,
            timeout: Duration::from_millis(2000),
        })
    );
    assert_eq!(
        parse(&args("flow udp h:1 --seconds 1")),
        Ok(Command::Flow {
            target: "h:1".into(),
            rate: 100,
            seconds: 1,
            timeout: Duration::from_millis(2000),
        })
    );
}

#[test]
fn rejects_bad_command_lines() {
    for bad in [
        "",
        "listen",
        "serve extra",
        "serve --tcp",
        "serve --tcp 70000",
        "serve --tcp 1 --tcp 2",
        "serve --timeout-ms 5",
        "probe tcp",
        "probe sctp h:1",
        "probe tcp h:1 h:2",
        "probe tcp h:1 --rate 5",
        "flow udp h:1",
        "flow tcp h:1 --seconds 1",
        "flow udp h:1 --seconds 1 --rate 0",
        "flow udp h:1 --seconds x",
    ] {
        assert!(parse(&args(bad)).is_err(), "{bad:?} parsed");
    }
}

#[test]
fn formats_answers() {
    let v4: SocketAddr = "10.244.1.5:40000".parse().unwrap();
    let mapped: SocketAddr = "[::ffff:10.244.1.5]:40000".parse().unwrap();
    let v6: SocketAddr = "[fd00::5]:40000".parse().unwrap();
    assert_eq!(
        tcp_answer("pod-a", v4),
        "tartan-echo pod-a 10.244.1.5:40000"
    );
    assert_eq!(
        tcp_answer("pod-a", mapped),
        "tartan-echo pod-a 10.244.1.5:40000"
    );
    assert_eq!(tcp_answer("pod-a", v6), "tartan-echo pod-a [fd00::5]:40000");
    assert_eq!(udp_answer("pod-a", b"flow 7"), b"pod-a flow 7");
    assert_eq!(tcp_response("x", false), "x\n");
    assert_eq!(
        tcp_response("x", true),
        "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\nx\n"
    );
    assert!(is_http("GET / HTTP/1.0\r\n"));
    assert!(is_http("HEAD /healthz HTTP/1.1\n"));
    assert!(!is_http("probe\n"));
    assert!(!is_http("get / http/1.0\n"));
    assert!(!is_http(""));
}

#[test]
fn flow_answers_carry_their_number() {
    assert_eq!(
        flow_seq(udp_answer("pod-a", flow_datagram(42).as_bytes()).as_slice()),
        Some(42)
    );
    assert_eq!(flow_seq(b"pod-a flow 0\n"), Some(0));
    assert_eq!(flow_seq(b"pod-a probe"), None);
    assert_eq!(flow_seq(b"pod-a flow x"), None);
    assert_eq!(flow_seq(b"7"), None);
    assert_eq!(flow_seq(&[0xff, b' ', b'1']), None);
}

#[test]
fn tally_counts_each_number_once() {
    let t = |sent, answers: &[u64]| tally(sent, answers.iter().copied()).to_string();
    assert_eq!(t(0, &[]), "sent 0 received 0 lost 0");
    assert_eq!(t(5, &[0, 1, 2, 3, 4]), "sent 5 received 5 lost 0");
    assert_eq!(t(5, &[4, 3, 0]), "sent 5 received 3 lost 2");
    // Duplicates (a datagram answered twice) and numbers never sent do not count.
    assert_eq!(t(5, &[1, 1, 1, 9, 5]), "sent 5 received 1 lost 4");
    assert_eq!(t(3, &[]), "sent 3 received 0 lost 3");
}

/// A closed port on loopback: bound, then dropped.
fn closed_port() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[test]
fn serve_probe_and_flow_over_loopback() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let (tcp, udp) = (listener.local_addr().unwrap(), socket.local_addr().unwrap());
    thread::spawn(move || serve_tcp(&listener, "echo-host"));
    thread::spawn(move || serve_udp(&socket, "echo-host"));
    let timeout = Duration::from_secs(2);

    let answer = probe_tcp(tcp, timeout).unwrap();
    assert!(
        answer.starts_with("tartan-echo echo-host 127.0.0.1:"),
        "{answer}"
    );

    let mut http = TcpStream::connect(tcp).unwrap();
    http.write_all(b"GET / HTTP/1.0\r\nHost: x\r\nUser-Agent: t\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    http.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.0 200 OK\r\n"), "{response}");
    assert!(
        response.contains("\r\n\r\ntartan-echo echo-host 127.0.0.1:"),
        "{response}"
    );

    assert_eq!(probe_udp(udp, timeout).unwrap(), "echo-host probe");

    let t = flow_udp(udp, 200, 1, timeout).unwrap();
    assert_eq!(
        t,
        Tally {
            sent: 200,
            received: 200,
            lost: 0
        }
    );

    // Nothing listening: the probes fail (exit 1), the flow loses everything.
    let closed = closed_port();
    assert!(probe_tcp(closed, timeout).is_err());
    assert!(probe_udp(closed, Duration::from_millis(300)).is_err());
    let probe = |proto| Command::Probe {
        proto,
        target: closed.to_string(),
        timeout: Duration::from_millis(300),
    };
    assert_eq!(run(probe(Proto::Tcp)), 1);
    assert_eq!(run(probe(Proto::Udp)), 1);
    let t = flow_udp(closed, 100, 1, Duration::from_millis(200)).unwrap();
    assert_eq!(
        t,
        Tally {
            sent: 100,
            received: 0,
            lost: 100
        }
    );
}
