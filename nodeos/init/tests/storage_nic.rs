//! The storage NIC as init sets it up (`Net::storage_up`), in a network
//! namespace of its own: the node's storage address lands on the NIC
//! named by `bigv.storage` at once usable (no duplicate address
//! detection), with the storage LAN on-link there, and a NIC that never
//! appears is an error naming it.

use std::process::Command;
use std::time::Duration;

use bigv_init::cmdline::{Mac, StorageLan};
use bigv_init::net::{Net, NetError};
use bigv_testkit::{add_bridge, in_fresh_netns, link, mac_of};

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("ip runs");
    assert!(out.status.success(), "ip {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_storage_nic_gets_the_nodes_address_usable_at_once() {
    in_fresh_netns(|| async {
        // A second NIC besides the boot one: stor0.
        add_bridge("boot0").await;
        add_bridge("stor0").await;
        let mac = Mac(mac_of(&link("stor0").await.unwrap()).unwrap());
        let lan = StorageLan {
            interface: "stor0".into(),
            prefix: "fd00:5::".parse().unwrap(),
        };
        let net = Net::connect().unwrap();
        let (nic, address) = net.storage_up(&lan, Duration::from_secs(2)).await.unwrap();
        assert_eq!(nic.name, "stor0");
        assert_eq!(address, lan.address(mac));

        let shown = ip(&["-6", "addr", "show", "dev", "stor0"]);
        let line = shown
            .lines()
            .find(|l| l.contains(&format!("{address}/64")))
            .unwrap_or_else(|| panic!("no {address}/64 on stor0: {shown}"));
        // Not tentative: bindable now, as the agents need at start.
        assert!(
            line.contains("nodad") && !line.contains("tentative"),
            "{line}"
        );
        std::net::UdpSocket::bind((address, 0)).expect("the address is bindable at once");
        // Every disc address is on-link through the storage NIC.
        let route = ip(&["-6", "route", "get", "fd00:5::2a"]);
        assert!(route.contains("dev stor0"), "{route}");
        assert!(!route.contains("via"), "{route}");

        // Again (init restarted by hand, say): same address, no error.
        let again = net.storage_up(&lan, Duration::from_secs(2)).await.unwrap();
        assert_eq!(again.1, address);

        let missing = StorageLan {
            interface: "eth9".into(),
            ..lan
        };
        let err = net
            .storage_up(&missing, Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(matches!(err, NetError::NoStorageNic(..)), "{err}");
        assert!(err.to_string().contains("eth9 (bigv.storage)"), "{err}");
    });
}
