//! The hostname changes only inside the UTS namespace of the thread that sets
//! it (needs root for `unshare(CLONE_NEWUTS)`; without it the test fails).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use nix::sched::{CloneFlags, unshare};
use tandem_netif::{Error, hostname, set_hostname};

#[test]
fn set_hostname_renames_only_its_own_uts_namespace() {
    let machine = hostname().unwrap();
    let inside = std::thread::spawn(|| {
        unshare(CloneFlags::CLONE_NEWUTS)
            .expect("this test needs root (CAP_SYS_ADMIN) to unshare a UTS namespace");
        set_hostname("meetings1.example.com").unwrap();
        let renamed = hostname().unwrap();
        let refused = set_hostname("meetings_1").unwrap_err();
        (renamed, refused, hostname().unwrap())
    })
    .join()
    .unwrap();
    assert_eq!(inside.0, "meetings1.example.com");
    assert!(
        matches!(inside.1, Error::InvalidHostname { .. }),
        "{}",
        inside.1
    );
    assert_eq!(
        inside.2, "meetings1.example.com",
        "a refused name changes nothing"
    );
    assert_eq!(hostname().unwrap(), machine, "the machine was renamed");
}
