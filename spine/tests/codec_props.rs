//! Property tests of the frame codec: every message survives a round trip
//! however the bytes are chunked, and no input makes the decoder panic.

mod common;

use std::collections::BTreeMap;

use bigv_spine::backup::{BackupFacts, DiscBackups, RestoreOrder};
use bigv_spine::codec::{CodecError, FrameCodec, encode_frame};
use bigv_spine::message::{ErrorCode, OrderError, Outcome, PowerAction};
use bigv_spine::resource::{
    DhcpConfig, DiscSpec, IncomingMirror, MemoryFacts, MigrationOrder, MigrationProgress,
    MigrationState, NetworkInterface, PoolFacts, SignalKind, TemplateCopy, UserAuthentication,
    VmDisc, VmIncoming, VmMigrationOrder, VmRunState, VmSignal, VmSpec,
};
use bigv_spine::{Hello, Resource, ResourceName, Role, ToBrain, ToNode};
use bytes::BytesMut;
use proptest::prelude::*;
use tokio_util::codec::Decoder;

fn segment() -> impl Strategy<Value = String> {
    "[a-z0-9][a-z0-9_-]{0,15}"
}

fn text() -> impl Strategy<Value = String> {
    // Any Unicode, including quotes and control characters.
    any::<String>()
}

fn vm_spec() -> impl Strategy<Value = VmSpec> {
    let nic = (
        text(),
        any::<u32>(),
        prop::collection::vec(text(), 0..3),
        prop::option::of((text(), text(), text(), text())),
    )
        .prop_map(|(mac, vlan_id, ips, dhcp)| NetworkInterface {
            mac,
            vlan_id,
            model: "virtio".into(),
            ips,
            dhcp: dhcp.map(|(network, router, hostname, domain)| DhcpConfig {
                network,
                router,
                hostname,
                domain,
            }),
        });
    let disc = (text(), prop::option::of(text())).prop_map(|(address, serial)| VmDisc {
        address,
        model: "virtio".into(),
        serial,
    });
    let users = prop::collection::btree_map(
        segment(),
        (prop::option::of(text()), prop::option::of(text())).prop_map(
            |(authorized_keys, password)| UserAuthentication {
                authorized_keys,
                password,
            },
        ),
        0..3,
    );
    let state = prop::option::of(prop_oneof![
        Just(VmRunState::Running),
        Just(VmRunState::Paused),
        Just(VmRunState::Stopped),
        Just(VmRunState::Migrating),
    ]);
    (
        (
            any::<u64>(),
            any::<u32>(),
            any::<bool>(),
            prop::option::of(text()),
        ),
        (
            text(),
            text(),
            prop::collection::vec(nic, 0..3),
            prop::collection::vec(disc, 0..3),
        ),
        (
            prop::option::of(text()),
            prop::collection::vec(text(), 0..2),
            users,
        ),
        (state, prop::option::of(any::<u64>()), signal()),
        live_migration(),
    )
        .prop_map(
            |(
                (memory, cores, balloon_on, cdrom_url),
                (display_name, keymap, nics, discs),
                (mgmt, keys, users),
                (state, started_at, signal),
                (incoming, migrate_to),
            )| VmSpec {
                memory,
                cores,
                balloon_on,
                cdrom_url,
                imager_options: None,
                display_name,
                keymap,
                network_interfaces: nics,
                discs,
                management_address: mgmt,
                management_ssh_keys: keys,
                console_users: users.keys().cloned().collect(),
                user_authentication: users,
                signal,
                state,
                started_at,
                incoming,
                migrate_to,
                migration: None,
            },
        )
}

fn live_migration() -> impl Strategy<Value = (Option<VmIncoming>, Option<VmMigrationOrder>)> {
    let incoming = (text(), prop::option::of(text()))
        .prop_map(|(from, endpoint)| VmIncoming { from, endpoint });
    let order = (
        any::<u64>(),
        text(),
        text(),
        prop::option::of(any::<u64>()),
        prop::option::of(any::<u64>()),
    )
        .prop_map(
            |(seq, to, endpoint, max_bandwidth, max_downtime_ms)| VmMigrationOrder {
                seq,
                to,
                endpoint,
                max_bandwidth,
                max_downtime_ms,
            },
        );
    (prop::option::of(incoming), prop::option::of(order))
}

fn signal() -> impl Strategy<Value = Option<VmSignal>> {
    let kind = prop_oneof![
        Just(SignalKind::Powerdown),
        Just(SignalKind::Reset),
        Just(SignalKind::Sendkey)
    ];
    prop::option::of(
        (any::<u64>(), kind, prop::option::of(text())).prop_map(|(seq, kind, keys)| VmSignal {
            seq,
            kind,
            keys,
        }),
    )
}

fn disc_spec() -> impl Strategy<Value = DiscSpec> {
    let migration = (
        segment(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        prop::option::of(any::<u64>()),
        (
            any::<u64>(),
            prop_oneof![
                Just(MigrationState::Copying),
                Just(MigrationState::Syncing),
                Just(MigrationState::Failed),
                Just(MigrationState::Uncertain),
            ],
            prop::option::of(text()),
        ),
    )
        .prop_map(
            |(to, bytes_done, bytes_total, bytes_per_second, eta_seconds, (seq, state, error))| {
                MigrationProgress {
                    to,
                    bytes_done,
                    bytes_total,
                    bytes_per_second,
                    eta_seconds,
                    seq,
                    state,
                    error,
                }
            },
        );
    let migrate_to = prop::option::of((any::<u64>(), segment(), text(), any::<bool>()).prop_map(
        |(seq, to, endpoint, backups)| MigrationOrder {
            seq,
            to,
            endpoint,
            backups,
        },
    ));
    let incoming = prop::option::of(
        (text(), prop::option::of(text()))
            .prop_map(|(from, endpoint)| IncomingMirror { from, endpoint }),
    );
    let template = prop::option::of(
        (any::<u64>(), text()).prop_map(|(seq, image)| TemplateCopy { seq, image }),
    );
    let taken = prop::collection::vec(
        (segment(), segment(), any::<u64>(), any::<u64>()).prop_map(
            |(id, pool, size, allocated)| BackupFacts {
                id,
                pool,
                size,
                allocated,
            },
        ),
        0..3,
    );
    let backups = prop::option::of(
        (
            prop::collection::vec(segment(), 0..3),
            prop::option::of(segment()),
            prop::option::of(
                (any::<u64>(), segment()).prop_map(|(seq, from)| RestoreOrder { seq, from }),
            ),
            taken,
            prop::option::of(any::<u64>()),
            prop::option::of(text()),
        )
            .prop_map(
                |(keep, pool, restore, taken, restored_seq, error)| DiscBackups {
                    keep,
                    pool,
                    restore,
                    taken,
                    restored_seq,
                    error,
                },
            ),
    );
    (
        (
            any::<u64>(),
            segment(),
            prop::collection::vec(text(), 0..3),
            text(),
        ),
        (
            template,
            prop::option::of(any::<u64>()),
            prop::option::of(any::<u64>()),
            prop::option::of(migration),
        ),
        (any::<bool>(), migrate_to, incoming, backups),
    )
        .prop_map(
            |(
                (size, storage_pool, access_control_list, address),
                (template, imaged_seq, allocated, migration),
                (allow_shrink, migrate_to, incoming, backups),
            )| DiscSpec {
                size,
                storage_pool,
                access_control_list,
                address,
                template,
                imaged_seq,
                allocated,
                migration,
                allow_shrink,
                migrate_to,
                incoming,
                backups,
                limits: None,
            },
        )
}

fn resource() -> impl Strategy<Value = Resource> {
    // Loads are integers/100 so their JSON text parses back exactly.
    let load = prop::array::uniform3(0u32..100_000).prop_map(|l| l.map(|x| f64::from(x) / 100.0));
    let pools = prop::collection::btree_map(
        segment(),
        (segment(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
            |(grade, size, free, allocated)| PoolFacts {
                grade,
                size,
                free,
                allocated,
            },
        ),
        0..4,
    );
    prop_oneof![
        (segment(), vm_spec()).prop_map(|(n, s)| Resource::vm(n, s)),
        (segment(), segment(), disc_spec()).prop_map(|(g, i, s)| Resource::disc(g, i, s)),
        load.prop_map(Resource::load),
        (any::<u64>(), any::<u64>())
            .prop_map(|(total, free)| Resource::memory(MemoryFacts { total, free })),
        pools.prop_map(|p: BTreeMap<_, _>| Resource::storage_pools(p)),
    ]
}

fn resource_name() -> impl Strategy<Value = ResourceName> {
    resource().prop_map(|r| r.name().clone())
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    prop_oneof![
        Just(ErrorCode::StaleGeneration),
        Just(ErrorCode::NotFound),
        Just(ErrorCode::AlreadyExists),
        Just(ErrorCode::Invalid),
        Just(ErrorCode::InsufficientResources),
        Just(ErrorCode::Failed),
        Just(ErrorCode::Unsupported),
    ]
}

fn to_brain() -> impl Strategy<Value = ToBrain> {
    let hello = (
        text(),
        any::<bool>(),
        text(),
        any::<u32>(),
        prop::collection::vec(text(), 0..3),
    )
        .prop_map(
            |(node_id, head, image_version, protocol_version, addresses)| {
                ToBrain::Hello(Hello {
                    node_id,
                    role: if head { Role::Head } else { Role::Tail },
                    image_version,
                    protocol_version,
                    addresses,
                })
            },
        );
    let outcome = prop_oneof![
        Just(Outcome::Ok),
        (error_code(), text())
            .prop_map(|(code, message)| Outcome::Error(OrderError { code, message })),
    ];
    prop_oneof![
        hello,
        (resource(), any::<u64>()).prop_map(|(resource, generation)| ToBrain::Created {
            resource,
            generation
        }),
        (resource(), any::<u64>()).prop_map(|(resource, generation)| ToBrain::Updated {
            resource,
            generation
        }),
        (resource_name(), any::<u64>())
            .prop_map(|(name, generation)| ToBrain::Destroyed { name, generation }),
        Just(ToBrain::Ready),
        (any::<u64>(), outcome).prop_map(|(tag, outcome)| ToBrain::Reply { tag, outcome }),
        any::<u64>().prop_map(|seq| ToBrain::Ping { seq }),
        any::<u64>().prop_map(|seq| ToBrain::Pong { seq }),
        text().prop_map(|message| ToBrain::ProtocolError { message }),
        prop::collection::vec(
            (any::<u64>(), text(), text(), text()).prop_map(|(at_ms, level, source, message)| {
                bigv_spine::logs::LogLine {
                    at_ms,
                    level,
                    source,
                    message,
                }
            }),
            0..4
        )
        .prop_map(|lines| ToBrain::Log { lines }),
    ]
}

fn to_node() -> impl Strategy<Value = ToNode> {
    prop_oneof![
        (any::<u32>(), text(), any::<Option<u64>>()).prop_map(
            |(protocol_version, brain_version, fence_timeout_secs)| ToNode::Welcome {
                protocol_version,
                brain_version,
                fence_timeout_secs,
            }
        ),
        (any::<u32>(), any::<u32>(), any::<u32>()).prop_map(
            |(node_version, brain_min, brain_max)| ToNode::VersionMismatch {
                node_version,
                brain_min,
                brain_max
            }
        ),
        (any::<u64>(), resource(), any::<u64>()).prop_map(|(tag, resource, generation)| {
            ToNode::Create {
                tag,
                resource,
                generation,
            }
        }),
        (any::<u64>(), resource(), any::<u64>()).prop_map(|(tag, resource, generation)| {
            ToNode::Update {
                tag,
                resource,
                generation,
            }
        }),
        (any::<u64>(), resource_name(), any::<u64>()).prop_map(|(tag, name, generation)| {
            ToNode::Remove {
                tag,
                name,
                generation,
            }
        }),
        (any::<u64>(), any::<bool>()).prop_map(|(tag, r)| ToNode::Power {
            tag,
            action: if r {
                PowerAction::Reboot
            } else {
                PowerAction::Poweroff
            }
        }),
        any::<u64>().prop_map(|seq| ToNode::Ping { seq }),
        any::<u64>().prop_map(|seq| ToNode::Pong { seq }),
        text().prop_map(|message| ToNode::ProtocolError { message }),
    ]
}

/// Feeds `bytes` to a decoder in chunks of the given sizes.
fn decode_chunked<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    chunks: &[usize],
) -> Result<Vec<T>, CodecError> {
    let mut codec = FrameCodec::<T, ()>::default();
    let mut buf = BytesMut::new();
    let mut out = vec![];
    let mut rest = bytes;
    let mut sizes = chunks.iter().cycle();
    while !rest.is_empty() {
        let n = (*sizes.next().unwrap_or(&1)).clamp(1, rest.len());
        buf.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        while let Some(frame) = codec.decode(&mut buf)? {
            out.push(frame);
        }
    }
    Ok(out)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn node_frames_round_trip(msgs in prop::collection::vec(to_brain(), 1..6), chunks in prop::collection::vec(1usize..64, 1..8)) {
        let bytes: Vec<u8> = msgs.iter().flat_map(|m| encode_frame(m).unwrap()).collect();
        let decoded: Vec<ToBrain> = decode_chunked(&bytes, &chunks).unwrap();
        prop_assert_eq!(decoded, msgs);
    }

    #[test]
    fn brain_frames_round_trip(msgs in prop::collection::vec(to_node(), 1..6), chunks in prop::collection::vec(1usize..64, 1..8)) {
        let bytes: Vec<u8> = msgs.iter().flat_map(|m| encode_frame(m).unwrap()).collect();
        let decoded: Vec<ToNode> = decode_chunked(&bytes, &chunks).unwrap();
        prop_assert_eq!(decoded, msgs);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048), chunks in prop::collection::vec(1usize..300, 1..4)) {
        let _ = decode_chunked::<ToBrain>(&bytes, &chunks);
        let _ = decode_chunked::<ToNode>(&bytes, &chunks);
    }

    /// Valid framing around arbitrary JSON-ish bodies: exercises the
    /// message parsers rather than the length check.
    #[test]
    fn arbitrary_bodies_never_panic(body in "\\{\"type\":\"(hello|created|updated|destroyed|reply|create|remove)\".{0,200}\\}") {
        let mut bytes = (body.len() as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(body.as_bytes());
        let _ = decode_chunked::<ToBrain>(&bytes, &[bytes.len()]);
        let _ = decode_chunked::<ToNode>(&bytes, &[bytes.len()]);
    }

    /// A corrupted valid stream is either still decodable or an error,
    /// never a panic.
    #[test]
    fn corrupted_streams_never_panic(msgs in prop::collection::vec(to_node(), 1..4), flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        let mut bytes: Vec<u8> = msgs.iter().flat_map(|m| encode_frame(m).unwrap()).collect();
        for (i, b) in flips {
            let at = i.index(bytes.len());
            bytes[at] ^= b;
        }
        let _ = decode_chunked::<ToNode>(&bytes, &[7]);
    }
}

#[test]
fn oversized_length_is_refused_without_the_body() {
    let mut codec = FrameCodec::<ToBrain, ()>::new(1000);
    let mut buf = BytesMut::from(&1001u32.to_be_bytes()[..]);
    let err = codec.decode(&mut buf).unwrap_err();
    assert!(
        matches!(
            err,
            CodecError::Oversized {
                len: 1001,
                max: 1000
            }
        ),
        "{err}"
    );
}
