//! The rtnetlink side: links (bridges, VLAN sub-interfaces, ports) and
//! the taps' anti-spoofing filters.

use futures::{StreamExt, TryStreamExt};
use rtnetlink::packet_core::{
    DefaultNla, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkMessage,
    NetlinkPayload,
};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::packet_route::neighbour::{NeighbourFlags, NeighbourState};
use rtnetlink::packet_route::tc::{
    TcAttribute, TcBpfFlags, TcFilterBpfOption, TcHandle, TcMessage, TcOption,
};
use rtnetlink::{LinkBridge, LinkBridgePort, LinkUnspec, LinkVlan};

use super::NetError;
use super::antispoof::{self, Allowed, Insn};

const TCA_BPF_OPS_LEN: u16 = 4;
const TCA_BPF_OPS: u16 = 5;
const ETH_P_ALL: u16 = 0x0003;

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(-m.raw_code()),
        _ => None,
    }
}

fn nl_err(what: &'static str, name: &str) -> impl FnOnce(rtnetlink::Error) -> NetError {
    let name = name.to_owned();
    move |source| NetError::Netlink { what, name, source }
}

/// A netlink connection in the calling thread's network namespace.
pub struct Netlink {
    handle: rtnetlink::Handle,
}

impl Netlink {
    /// Connects; the connection runs on the current tokio runtime until
    /// this is dropped.
    pub fn connect() -> Result<Netlink, NetError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(NetError::Connect)?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    pub fn handle(&self) -> &rtnetlink::Handle {
        &self.handle
    }

    /// The index of the link `name`, if it exists.
    pub async fn index(&self, name: &str) -> Result<Option<u32>, NetError> {
        let found = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute()
            .try_next()
            .await;
        match found {
            Ok(link) => Ok(link.map(|l| l.header.index)),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(nl_err("looking up", name)(e)),
        }
    }

    pub async fn up(&self, index: u32, name: &str) -> Result<(), NetError> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(nl_err("bringing up", name))
    }

    /// Adds the link unless one of that name exists; returns its index.
    async fn ensure(
        &self,
        name: &str,
        message: rtnetlink::packet_route::link::LinkMessage,
        what: &'static str,
    ) -> Result<u32, NetError> {
        if let Some(index) = self.index(name).await? {
            self.up(index, name).await?;
            return Ok(index);
        }
        match self.handle.link().add(message).execute().await {
            Ok(()) => {}
            // Another VM's start made it meanwhile.
            Err(e) if errno(&e) == Some(libc::EEXIST) => {}
            Err(e)
                if what == "creating the VLAN interface" && errno(&e) == Some(libc::EOPNOTSUPP) =>
            {
                return Err(NetError::NoVlanSupport);
            }
            Err(e) => return Err(nl_err(what, name)(e)),
        }
        let index = self.index(name).await?.ok_or_else(|| NetError::Netlink {
            what,
            name: name.to_owned(),
            source: rtnetlink::Error::RequestFailed,
        })?;
        self.up(index, name).await?;
        Ok(index)
    }

    pub async fn ensure_bridge(&self, name: &str) -> Result<u32, NetError> {
        self.ensure(
            name,
            LinkBridge::new(name).up().build(),
            "creating the bridge",
        )
        .await
    }

    pub async fn ensure_vlan(&self, name: &str, trunk: u32, vlan: u32) -> Result<u32, NetError> {
        let id = u16::try_from(vlan).map_err(|_| NetError::Invalid {
            field: "vlan_id".into(),
            reason: format!("{vlan} is not a VLAN id"),
        })?;
        self.ensure(
            name,
            LinkVlan::new(name, trunk, id).up().build(),
            "creating the VLAN interface",
        )
        .await
    }

    /// Makes `port` a port of `bridge`, up.
    pub async fn enslave(&self, port: u32, name: &str, bridge: u32) -> Result<(), NetError> {
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(port)
                    .controller(bridge)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(nl_err("adding to its bridge", name))
    }

    /// Narrows what a VM's bridge port gets: no MAC learning and no
    /// flooding of unknown unicast to it (a VM does not see frames meant
    /// for MACs the bridge has not placed yet), and a static FDB entry
    /// for the VM's MAC on it, so frames for the VM always find it.
    /// Broadcast and multicast (ARP, neighbour discovery) still reach it.
    pub async fn lock_port(&self, port: u32, name: &str, mac: [u8; 6]) -> Result<(), NetError> {
        self.handle
            .link()
            .set_port(
                LinkBridgePort::new(port)
                    .learning(false)
                    .flood(false)
                    .build(),
            )
            .execute()
            .await
            .map_err(nl_err("setting the bridge port flags of", name))?;
        self.handle
            .neighbours()
            .add_bridge(port, &mac)
            .state(NeighbourState::Noarp)
            .flags(NeighbourFlags::Controller)
            .replace()
            .execute()
            .await
            .map_err(nl_err("adding the MAC to the bridge for", name))
    }

    /// Deletes the link `name`; false if there was none.
    pub async fn delete(&self, name: &str) -> Result<bool, NetError> {
        let Some(index) = self.index(name).await? else {
            return Ok(false);
        };
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(false),
            Err(e) => Err(nl_err("deleting", name)(e)),
        }
    }

    /// Sends one request and waits for its acknowledgement.
    async fn request(&self, msg: RouteNetlinkMessage, flags: u16) -> Result<(), rtnetlink::Error> {
        let mut req = NetlinkMessage::from(msg);
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        let mut handle = self.handle.clone();
        let mut response = handle.request(req)?;
        while let Some(m) = response.next().await {
            if let NetlinkPayload::Error(e) = m.payload {
                return Err(rtnetlink::Error::NetlinkError(e));
            }
        }
        Ok(())
    }

    /// Installs (or replaces) the tap's ingress qdisc and its two
    /// filters (`antispoof.rs`): preference 1 the verdict, preference 2
    /// drop-all. Replacing the verdict filter is atomic, so a re-adopted
    /// VM is never unfiltered.
    pub async fn antispoof(&self, tap: u32, name: &str, allowed: &Allowed) -> Result<(), NetError> {
        let verdict = antispoof::program(allowed).map_err(|e| NetError::Invalid {
            field: "ips".into(),
            reason: e.to_string(),
        })?;
        let mut qdisc = TcMessage::with_index(tap as i32);
        qdisc.header.parent = TcHandle::INGRESS;
        qdisc.header.handle = TcHandle {
            major: 0xffff,
            minor: 0,
        };
        qdisc.attributes.push(TcAttribute::Kind("ingress".into()));
        match self
            .request(
                RouteNetlinkMessage::NewQueueDiscipline(qdisc),
                NLM_F_CREATE | NLM_F_EXCL,
            )
            .await
        {
            Ok(()) => {}
            Err(e) if errno(&e) == Some(libc::EEXIST) => {}
            Err(e) => return Err(nl_err("adding the ingress qdisc to", name)(e)),
        }
        // The drop-all first: a new tap drops everything until its
        // verdict filter is in.
        self.filter(tap, 2, &antispoof::drop_all(), true)
            .await
            .map_err(nl_err("adding the drop filter to", name))?;
        self.filter(tap, 1, &verdict, false)
            .await
            .map_err(nl_err("adding the anti-spoofing filter to", name))
    }

    async fn filter(
        &self,
        tap: u32,
        preference: u16,
        program: &[Insn],
        direct_action: bool,
    ) -> Result<(), rtnetlink::Error> {
        let mut msg = TcMessage::with_index(tap as i32);
        msg.header.parent = TcHandle {
            major: 0xffff,
            minor: TcHandle::MIN_INGRESS,
        };
        msg.header.handle = 1.into();
        // Preference in the upper half, protocol (network order) below.
        msg.header.info = (u32::from(preference) << 16) | u32::from(ETH_P_ALL.to_be());
        msg.attributes.push(TcAttribute::Kind("bpf".into()));
        let len = u16::try_from(program.len()).expect("a short program");
        let mut options = vec![
            TcOption::Other(DefaultNla::new(TCA_BPF_OPS_LEN, len.to_ne_bytes().to_vec())),
            TcOption::Other(DefaultNla::new(TCA_BPF_OPS, antispoof::encode(program))),
            TcOption::Bpf(TcFilterBpfOption::ProgName(format!(
                "bigv-antispoof-{preference}"
            ))),
        ];
        if direct_action {
            options.push(TcOption::Bpf(TcFilterBpfOption::Flags(
                TcBpfFlags::DirectAction,
            )));
        }
        msg.attributes.push(TcAttribute::Options(options));
        self.request(
            RouteNetlinkMessage::NewTrafficFilter(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .await
    }

    /// The ingress filters of a link: (preference, kind) pairs.
    pub async fn ingress_filters(&self, index: u32) -> Result<Vec<(u16, String)>, NetError> {
        let msgs: Vec<TcMessage> = self
            .handle
            .traffic_filter(index as i32)
            .get()
            .ingress()
            .execute()
            .try_collect()
            .await
            .map_err(nl_err("listing the filters of", &index.to_string()))?;
        let mut out: Vec<(u16, String)> = msgs
            .iter()
            .filter_map(|m| {
                let kind = m.attributes.iter().find_map(|a| match a {
                    TcAttribute::Kind(k) => Some(k.clone()),
                    _ => None,
                })?;
                Some(((m.header.info >> 16) as u16, kind))
            })
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }
}
