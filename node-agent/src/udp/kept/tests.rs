use super::*;

fn features() -> Features {
    Features {
        tun: TunFeatures {
            vnet_hdr: true,
            tso: true,
            uso: false,
            queues: 2,
        },
        gso: true,
        gro: true,
    }
}

const HERE: Here = Here {
    netns: 1,
    cookie: 1,
};

const WANTED: Wanted = Wanted {
    port: 51820,
    queues: 2,
    offloads: true,
};

#[test]
fn the_meta_round_trips() {
    let text = meta(WANTED, &features());
    assert_eq!(
        text,
        "v1 port=51820 queues=2 offloads=1 vnet=1 tso=1 uso=0 attached=2 gso=1 gro=1"
    );
    let (wanted, granted) = parse_meta(&text).expect("parses");
    assert_eq!((wanted, granted), (WANTED, features()));
}

#[test]
fn another_version_or_a_missing_field_is_unusable() {
    for text in [
        "v2 port=51820 queues=2 offloads=1 vnet=1 tso=1 uso=0 attached=2 gso=1 gro=1",
        "v1 port=51820 queues=2 offloads=1 vnet=1 tso=1 uso=0 attached=2 gso=1",
        "v1 port=70000 queues=2 offloads=1 vnet=1 tso=1 uso=0 attached=2 gso=1 gro=1",
        "v1 port=x",
    ] {
        assert!(matches!(parse_meta(text), Err(Unusable::Meta(_))), "{text}");
    }
}

#[test]
fn descriptors_opened_otherwise_or_miscounted_are_unusable() {
    let other = Wanted {
        port: 8472,
        ..WANTED
    };
    let kept = Kept {
        meta: meta(other, &features()),
        fds: Vec::new(),
    };
    let error = adopt("tartan-wg0", WANTED, HERE, kept)
        .map(|_| ())
        .expect_err("port");
    assert!(matches!(error, Unusable::Other { .. }), "{error}");
    let (a, b) = nix::unistd::pipe().expect("pipe");
    let kept = Kept {
        meta: meta(WANTED, &features()),
        fds: vec![a, b],
    };
    let error = adopt("tartan-wg0", WANTED, HERE, kept)
        .map(|_| ())
        .expect_err("count");
    assert!(
        matches!(error, Unusable::Count { got: 2, queues: 2 }),
        "{error}"
    );
}

/// A one-queue datapath's hand-over to a keeper at `path`, counting in `events`.
fn one_queue_handover(path: &std::path::Path, events: &prometheus::IntCounterVec) -> Handover {
    let (queue, _other_end) = nix::unistd::pipe().expect("pipe");
    let socket = UdpSocket::bind(0, false).expect("a socket");
    Handover {
        keeper: Keeper::at(path).counted(events.clone()),
        device: "tartan0".into(),
        wanted: WANTED,
        features: Features {
            tun: TunFeatures {
                queues: 1,
                ..features().tun
            },
            ..features()
        },
        queues: vec![Arc::new(queue)],
        sockets: vec![Arc::new(socket)],
        seen: Mutex::default(),
    }
}

fn keeper_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("tartan-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    dir
}

fn events() -> prometheus::IntCounterVec {
    prometheus::IntCounterVec::new(prometheus::Opts::new("events", "events"), &["event"])
        .expect("a counter")
}

fn counted(events: &prometheus::IntCounterVec, event: Event) -> u64 {
    events.with_label_values(&[event.label()]).get()
}

#[test]
fn a_keeper_that_lost_what_it_held_gets_it_again_at_the_next_renewal() {
    let dir = keeper_dir("renew");
    let path = dir.join("keeper.sock");
    let serving = crate::keeper::Serving::start(&path).expect("the keeper listens");
    let events = events();
    let handover = one_queue_handover(&path, &events);
    // The keeper started after the datapath: it holds nothing yet.
    handover.renew();
    let kept = handover.keeper.get("tartan0").expect("get").expect("kept");
    assert_eq!(kept.fds.len(), 2);
    assert!(kept.meta.contains("attached=1"), "{}", kept.meta);
    assert_eq!(counted(&events, Event::HandedOver), 1);
    handover.retire();
    assert!(handover.keeper.get("tartan0").expect("get").is_none());
    serving.stop().expect("served");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_replaced_keeper_is_handed_the_datapath_when_followed_and_the_same_one_is_left_alone() {
    let dir = keeper_dir("follow");
    let path = dir.join("keeper.sock");
    let first = crate::keeper::Serving::start(&path).expect("the keeper listens");
    let events = events();
    let handover = one_queue_handover(&path, &events);
    handover.hand_over();
    for _ in 0..3 {
        handover.follow();
    }
    assert_eq!(counted(&events, Event::HandedOver), 1, "the same keeper");
    // Its pod replaced: the new keeper binds a new socket and holds nothing.
    // (A keeper lives longer than a change-time tick, which may be a jiffy.)
    std::thread::sleep(std::time::Duration::from_millis(20));
    first.stop().expect("served");
    let second = crate::keeper::Serving::start(&path).expect("the keeper listens again");
    assert!(handover.keeper.get("tartan0").expect("get").is_none());
    handover.follow();
    let kept = handover.keeper.get("tartan0").expect("get");
    assert_eq!(kept.map(|k| k.fds.len()), Some(2), "handed over again");
    assert_eq!(counted(&events, Event::HandedOver), 2);
    handover.follow();
    assert_eq!(counted(&events, Event::HandedOver), 2, "once per keeper");
    second.stop().expect("served");
    // No keeper at all: nothing to follow, nothing counted as failed.
    let _ = std::fs::remove_file(&path);
    handover.follow();
    assert_eq!(counted(&events, Event::Unreachable), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_descriptor_that_is_no_tun_queue_is_unusable() {
    let pipes: Vec<OwnedFd> = (0..2)
        .flat_map(|_| {
            let (a, b) = nix::unistd::pipe().expect("pipe");
            [a, b]
        })
        .collect();
    let kept = Kept {
        meta: meta(WANTED, &features()),
        fds: pipes,
    };
    let error = adopt("tartan-wg0", WANTED, HERE, kept)
        .map(|_| ())
        .expect_err("pipes");
    assert!(matches!(error, Unusable::Queue(_)), "{error}");
}
