//! NICs and addresses through the customer API: extra addresses with
//! ip_create, reverse DNS and release through /ips, swapping two
//! servers' addresses, and running out.

mod api_support;
mod common;

use api_support::*;
use bigv_brain::model::{Level, Target};
use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn setup(tb: &TestBrain) -> (bigv_spine::sim::SimFleet, String) {
    let fleet = cluster(tb, 1, 1).await;
    networks_and_images(tb).await;
    let su = tb.su().await;
    account(tb, &su, "alice").await;
    (fleet, su)
}

fn ip_create_path(vm: &Value) -> String {
    format!(
        "{}/nics/{}/ip_create",
        vm_path("alice", vm["name"].as_str().unwrap()),
        vm["network_interfaces"][0]["id"]
    )
}

#[tokio::test]
async fn extra_addresses_are_routed_via_the_primary_until_none_are_left() {
    let tb = TestBrain::start().await;
    let (_fleet, su) = setup(&tb).await;
    let vm = create_vm(&tb, &su, "alice", small_vm("web1")).await;
    let path = ip_create_path(&vm);
    let (status, got) = tb
        .post(
            &su,
            &path,
            json!({"addresses": 2, "family": "ipv4", "reason": "ssl sites", "contiguous": false}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{got}");
    assert_eq!(got, json!({"ips": ["192.0.2.3", "192.0.2.4"]}));
    let (status, got6) = tb
        .post(&su, &path, json!({"addresses": 1, "family": "ipv6"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{got6}");
    assert_eq!(got6, json!({"ips": ["2001:db8::3"]}));
    let (_, vm) = tb.get(&su, &vm_path("alice", "web1")).await;
    assert_eq!(
        vm["network_interfaces"][0]["extra_ips"],
        json!({"192.0.2.3": "192.0.2.2", "192.0.2.4": "192.0.2.2",
               "2001:db8::3": "2001:db8::2"})
    );
    assert_eq!(ips_of(&vm).len(), 5);
    let (_, nics) = tb
        .get(&su, &format!("{}/nics", vm_path("alice", "web1")))
        .await;
    assert_eq!(
        nics[0]["extra_ips"],
        vm["network_interfaces"][0]["extra_ips"]
    );

    for (body, field) in [
        (json!({"addresses": 5}), "addresses"),
        (json!({"addresses": 0}), "addresses"),
        (json!({"family": "ipx"}), "family"),
    ] {
        let (status, e) = tb.post(&su, &path, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{e}");
        assert_eq!(messages(&e, field).len(), 1, "{e}");
    }

    // 192.0.2.0/28 has hosts .2 to .14: ten more take the rest.
    for _ in 0..2 {
        let (status, _) = tb.post(&su, &path, json!({"addresses": 4})).await;
        assert_eq!(status, StatusCode::OK);
    }
    let (status, last) = tb.post(&su, &path, json!({"addresses": 2})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(last, json!({"ips": ["192.0.2.13", "192.0.2.14"]}));
    let (status, e) = tb.post(&su, &path, json!({"addresses": 1})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(messages(&e, "addresses")[0].contains("only 0 free"), "{e}");
    // A new server still gets made, with no IPv4 address.
    let next = create_vm(&tb, &su, "alice", small_vm("web2")).await;
    assert_eq!(next["network_interfaces"][0]["ips"], json!(["2001:db8::4"]));
}

#[tokio::test]
async fn ips_show_take_reverse_dns_and_extra_ones_can_be_given_back() {
    let tb = TestBrain::start().await;
    let (_fleet, su) = setup(&tb).await;
    let vm = create_vm(&tb, &su, "alice", small_vm("web1")).await;
    tb.post(&su, &ip_create_path(&vm), json!({"addresses": 1}))
        .await;
    let (status, ip) = tb.get(&su, "/ips/192.0.2.3").await;
    assert_eq!(status, StatusCode::OK, "{ip}");
    assert_eq!(ip["ip"], "192.0.2.3");
    assert_eq!(ip["rdns"], Value::Null);
    assert_eq!(ip["virtual_machine_id"], vm["id"]);
    let (status, ip) = tb
        .put(&su, "/ips/2001:db8::2", json!({"rdns": "web1.example.com"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{ip}");
    assert_eq!(ip["rdns"], "web1.example.com");
    let (status, e) = tb
        .put(&su, "/ips/2001:db8::2", json!({"rdns": "not a name"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(messages(&e, "rdns").len(), 1);

    // Someone with no privilege on the server cannot see its addresses.
    let stranger = user(&tb, "stranger", &[]).await;
    let (status, _) = tb.get(&stranger, "/ips/192.0.2.3").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let console = user(
        &tb,
        "console",
        &[(
            Level::VmConsole,
            Target::Vm(bigv_brain::model::VmId(vm["id"].as_u64().unwrap())),
        )],
    )
    .await;
    let (status, _) = tb.get(&console, "/ips/192.0.2.3").await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = tb.delete(&console, "/ips/192.0.2.3").await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let (status, reason) = tb.delete(&su, "/ips/192.0.2.2").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "a primary address stays");
    assert!(reason.as_str().unwrap().contains("primary"));
    let (status, _) = tb.delete(&su, "/ips/192.0.2.3").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = tb.get(&su, "/ips/192.0.2.3").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "given back");
    let (_, vm) = tb.get(&su, &vm_path("alice", "web1")).await;
    assert_eq!(vm["network_interfaces"][0]["extra_ips"], json!({}));
}

#[tokio::test]
async fn swapping_exchanges_primary_addresses_and_optionally_extras() {
    let tb = TestBrain::start().await;
    let (_fleet, su) = setup(&tb).await;
    let a = create_vm(&tb, &su, "alice", small_vm("a")).await;
    let b = create_vm(&tb, &su, "alice", small_vm("b")).await;
    tb.post(&su, &ip_create_path(&a), json!({"addresses": 1}))
        .await;
    let a_ips = a["network_interfaces"][0]["ips"].clone();
    let b_ips = b["network_interfaces"][0]["ips"].clone();
    let swap = |extra: bool| {
        json!({"virtual_machine_1_id": a["id"], "virtual_machine_2_id": b["id"],
               "move_additional_ips": extra})
    };
    let (status, body) = tb
        .post(&su, "/ips/swap_virtual_machine_ips", swap(false))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, a2) = tb.get(&su, &vm_path("alice", "a")).await;
    let (_, b2) = tb.get(&su, &vm_path("alice", "b")).await;
    assert_eq!(a2["network_interfaces"][0]["ips"], b_ips);
    assert_eq!(b2["network_interfaces"][0]["ips"], a_ips);
    // a keeps its extra address, now routed via its new primary.
    assert_eq!(
        a2["network_interfaces"][0]["extra_ips"],
        json!({"192.0.2.4": b_ips[0]})
    );
    let (_, owner) = tb
        .get(&su, &format!("/ips/{}", a_ips[0].as_str().unwrap()))
        .await;
    assert_eq!(owner["virtual_machine_id"], b["id"]);

    let (status, _) = tb
        .post(&su, "/ips/swap_virtual_machine_ips", swap(true))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, b3) = tb.get(&su, &vm_path("alice", "b")).await;
    assert_eq!(b3["network_interfaces"][0]["ips"], b_ips);
    assert_eq!(
        b3["network_interfaces"][0]["extra_ips"],
        json!({"192.0.2.4": b_ips[0]}),
        "the extra address moved with move_additional_ips"
    );
    let (_, owner) = tb.get(&su, "/ips/192.0.2.4").await;
    assert_eq!(owner["virtual_machine_id"], b["id"]);

    let (status, e) = tb
        .post(
            &su,
            "/ips/swap_virtual_machine_ips",
            json!({"virtual_machine_1_id": a["id"], "virtual_machine_2_id": a["id"]}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{e}");
    let stranger = user(&tb, "stranger", &[]).await;
    let (status, _) = tb
        .post(&stranger, "/ips/swap_virtual_machine_ips", swap(false))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
