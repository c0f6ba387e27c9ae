//! Test support shared by the workspace's crates, as a dev-dependency
//! only: network namespaces, so networking tests never touch the host's
//! interfaces.

use futures::TryStreamExt;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::{LinkBridge, LinkUnspec};

/// Runs `f` on a thread of its own inside a fresh network namespace with
/// `lo` up. Namespaces are per thread: the runtime's worker threads, and
/// the processes they start (`ip`, `ssh`, qemu…), are created inside it.
pub fn in_fresh_netns<F, Fut>(f: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let joined = std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .expect("unshare(CLONE_NEWNET) needs CAP_SYS_ADMIN (run the tests as root)");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        rt.block_on(async move {
            let lo = link("lo").await.expect("lo exists in every namespace");
            set_up(lo.header.index).await;
            f().await
        });
    })
    .join();
    // The test's own panic message, not "a thread panicked".
    if let Err(panic) = joined {
        std::panic::resume_unwind(panic);
    }
}

/// [`in_fresh_netns`] with a bridge `bridge` up (this kernel builds no
/// dummy links; a bridge is an interface that is always there).
pub fn in_netns_with_bridge<F, Fut>(bridge: &'static str, f: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    in_fresh_netns(move || async move {
        add_bridge(bridge).await;
        f().await
    })
}

/// Adds a bridge `name`, up; its index.
pub async fn add_bridge(name: &str) -> u32 {
    handle()
        .link()
        .add(LinkBridge::new(name).up().build())
        .execute()
        .await
        .unwrap_or_else(|e| panic!("adding bridge {name}: {e}"));
    link(name)
        .await
        .unwrap_or_else(|| panic!("bridge {name} vanished"))
        .header
        .index
}

/// The link called `name`, if there is one.
pub async fn link(name: &str) -> Option<LinkMessage> {
    let links: Vec<LinkMessage> = handle()
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .expect("listing links");
    links.into_iter().find(|l| {
        l.attributes
            .iter()
            .any(|a| matches!(a, LinkAttribute::IfName(n) if n == name))
    })
}

/// A link's MAC address.
pub fn mac_of(link: &LinkMessage) -> Option<[u8; 6]> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(b) => b.as_slice().try_into().ok(),
        _ => None,
    })
}

async fn set_up(index: u32) {
    handle()
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .expect("setting a link up");
}

/// A netlink handle in the calling thread's namespace.
fn handle() -> rtnetlink::Handle {
    let (conn, handle, _) = rtnetlink::new_connection().expect("a netlink socket");
    tokio::spawn(conn);
    handle
}
