//! proptest strategies for valid packets of each protocol version.

use crate::codec::reason::{
    AUTH_REASONS, CONNACK_REASONS, DISCONNECT_REASONS, PUBACK_REASONS, PUBREL_REASONS,
    SUBACK_REASONS, UNSUBACK_REASONS,
};
use crate::codec::ProtocolVersion::{V3_1, V5};
use crate::codec::*;
use bytes::Bytes;
use proptest::collection::vec;
use proptest::option::of;
use proptest::prelude::*;
use proptest::sample::select;
use std::num::{NonZeroU16, NonZeroU32};

pub(crate) fn version() -> impl Strategy<Value = ProtocolVersion> {
    select(vec![ProtocolVersion::V3_1, ProtocolVersion::V3_1_1, V5])
}

fn text() -> impl Strategy<Value = ByteStr> {
    "[a-zA-Z0-9 /$+#é€😀-]{0,8}".prop_map(ByteStr::from)
}

fn bin() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..12).prop_map(Bytes::from)
}

fn topic_name() -> impl Strategy<Value = ByteStr> {
    "[a-z0-9/$ é]{1,10}".prop_map(ByteStr::from)
}

fn topic_filter() -> impl Strategy<Value = ByteStr> {
    let level = prop_oneof![Just("+".to_owned()), "[a-z0-9$]{0,3}"];
    (vec(level, 1..4), any::<bool>(), any::<bool>()).prop_map(|(levels, hash, share)| {
        let mut f = levels.join("/");
        if f.is_empty() {
            f.push('x');
        }
        if hash {
            f.push_str("/#");
        }
        if share {
            f = format!("$share/g/{f}");
        }
        ByteStr::from(f)
    })
}

fn user() -> impl Strategy<Value = UserProperties> {
    vec((text(), text()), 0..3)
}

fn qos() -> impl Strategy<Value = QoS> {
    select(vec![QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce])
}

fn pid() -> impl Strategy<Value = PacketId> {
    (1..=u16::MAX).prop_map(|n| PacketId::new(n).unwrap_or(PacketId::MIN))
}

fn nz16() -> impl Strategy<Value = NonZeroU16> {
    (1..=u16::MAX).prop_map(|n| NonZeroU16::new(n).unwrap_or(NonZeroU16::MIN))
}

fn nz32() -> impl Strategy<Value = NonZeroU32> {
    (1..=u32::MAX).prop_map(|n| NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN))
}

fn sub_id() -> impl Strategy<Value = NonZeroU32> {
    (1..=MAX_REMAINING_LENGTH).prop_map(|n| NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN))
}

/// Authentication Method and Data: data only with a method (a Protocol
/// Error otherwise, 5.0 section 3.1.2.11.10).
fn authentication() -> impl Strategy<Value = (Option<ByteStr>, Option<Bytes>)> {
    (of(text()), of(bin())).prop_map(|(method, data)| {
        let data = data.filter(|_| method.is_some());
        (method, data)
    })
}

fn reason(list: &'static [u8]) -> impl Strategy<Value = ReasonCode> {
    select(list).prop_map(|b| ReasonCode::from_u8(b).unwrap_or_default())
}

/// 5.0 properties for `v5`, defaults otherwise.
fn props<T: Default + std::fmt::Debug + Clone + 'static>(
    v: ProtocolVersion,
    s: impl Strategy<Value = T> + 'static,
) -> BoxedStrategy<T> {
    if v.is_v5() {
        s.boxed()
    } else {
        Just(T::default()).boxed()
    }
}

fn connect_props() -> impl Strategy<Value = ConnectProperties> {
    (
        of(any::<u32>()),
        of(nz16()),
        of(nz32()),
        of(any::<u16>()),
        of(any::<bool>()),
        of(any::<bool>()),
        authentication(),
        user(),
    )
        .prop_map(|(a, b, c, d, e, f, (g, h), i)| ConnectProperties {
            session_expiry_interval: a,
            receive_maximum: b,
            maximum_packet_size: c,
            topic_alias_maximum: d,
            request_response_information: e,
            request_problem_information: f,
            authentication_method: g,
            authentication_data: h,
            user_properties: i,
        })
}

fn will_props() -> impl Strategy<Value = WillProperties> {
    (
        of(any::<u32>()),
        of(0..=1u8),
        of(any::<u32>()),
        of(text()),
        of(topic_name()),
        of(bin()),
        user(),
    )
        .prop_map(|(a, b, c, d, e, f, g)| WillProperties {
            will_delay_interval: a,
            payload_format_indicator: b,
            message_expiry_interval: c,
            content_type: d,
            response_topic: e,
            correlation_data: f,
            user_properties: g,
        })
}

fn connect(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let will = (
        topic_name(),
        bin(),
        qos(),
        any::<bool>(),
        props(v, will_props()),
    )
        .prop_map(|(topic, payload, qos, retain, properties)| LastWill {
            topic,
            payload,
            qos,
            retain,
            properties,
        });
    (
        any::<bool>(),
        any::<u16>(),
        text(),
        of(will),
        of(text()),
        of(bin()),
        props(v, connect_props()),
    )
        .prop_map(
            move |(clean_start, keep_alive, client_id, will, username, password, properties)| {
                // 3.x forbids a password without a user name [MQTT-3.1.2-22].
                let password = if v.is_v5() || username.is_some() {
                    password
                } else {
                    None
                };
                Packet::Connect(Box::new(Connect {
                    protocol: v,
                    clean_start,
                    keep_alive,
                    client_id,
                    will,
                    username,
                    password,
                    properties,
                }))
            },
        )
}

fn connack_props() -> impl Strategy<Value = ConnAckProperties> {
    let a = (
        of(any::<u32>()),
        of(nz16()),
        of(select(vec![QoS::AtMostOnce, QoS::AtLeastOnce])),
        of(any::<bool>()),
        of(nz32()),
        of(text()),
        of(any::<u16>()),
        of(text()),
        user(),
    );
    let b = (
        of(any::<bool>()),
        of(any::<bool>()),
        of(any::<bool>()),
        of(any::<u16>()),
        of(text()),
        of(text()),
        authentication(),
    );
    (a, b).prop_map(
        |((a, b, c, d, e, f, g, h, i), (j, k, l, m, n, o, (p, q)))| ConnAckProperties {
            session_expiry_interval: a,
            receive_maximum: b,
            maximum_qos: c,
            retain_available: d,
            maximum_packet_size: e,
            assigned_client_identifier: f,
            topic_alias_maximum: g,
            reason_string: h,
            user_properties: i,
            wildcard_subscription_available: j,
            subscription_identifiers_available: k,
            shared_subscription_available: l,
            server_keep_alive: m,
            response_information: n,
            server_reference: o,
            authentication_method: p,
            authentication_data: q,
        },
    )
}

fn connack(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    use ReasonCode::*;
    let reasons = if v.is_v5() {
        reason(CONNACK_REASONS).boxed()
    } else {
        select(vec![
            Success,
            UnsupportedProtocolVersion,
            ClientIdentifierNotValid,
            ServerUnavailable,
            BadUserNameOrPassword,
            NotAuthorized,
        ])
        .boxed()
    };
    (any::<bool>(), reasons, props(v, connack_props())).prop_map(
        move |(session_present, reason, properties)| {
            Packet::ConnAck(ConnAck {
                session_present: session_present && v != V3_1,
                reason,
                properties,
            })
        },
    )
}

fn publish_props() -> impl Strategy<Value = PublishProperties> {
    (
        of(0..=1u8),
        of(any::<u32>()),
        of(nz16()),
        of(topic_name()),
        of(bin()),
        user(),
        vec(sub_id(), 0..3),
        of(text()),
    )
        .prop_map(|(a, b, c, d, e, f, g, h)| PublishProperties {
            payload_format_indicator: a,
            message_expiry_interval: b,
            topic_alias: c,
            response_topic: d,
            correlation_data: e,
            user_properties: f,
            subscription_identifiers: g,
            content_type: h,
        })
}

fn publish(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    (
        any::<bool>(),
        qos(),
        pid(),
        any::<bool>(),
        topic_name(),
        any::<bool>(),
        bin(),
        props(v, publish_props()),
    )
        .prop_map(
            |(dup, qos, pid, retain, topic, drop_topic, payload, properties)| {
                let qos_pid = QosPid::new(qos, pid);
                // An empty topic is legal only with a topic alias (5.0).
                let topic = if drop_topic && properties.topic_alias.is_some() {
                    ByteStr::new()
                } else {
                    topic
                };
                Packet::Publish(Publish {
                    dup: dup && qos != QoS::AtMostOnce,
                    qos_pid,
                    retain,
                    topic,
                    payload,
                    properties,
                })
            },
        )
}

fn ack_props(v: ProtocolVersion) -> BoxedStrategy<AckProperties> {
    props(
        v,
        (of(text()), user()).prop_map(|(reason_string, user_properties)| AckProperties {
            reason_string,
            user_properties,
        }),
    )
}

fn pub_resp(v: ProtocolVersion, list: &'static [u8]) -> impl Strategy<Value = PubResp> {
    let reasons = if v.is_v5() {
        reason(list).boxed()
    } else {
        Just(ReasonCode::Success).boxed()
    };
    (pid(), reasons, ack_props(v)).prop_map(|(packet_id, reason, properties)| PubResp {
        packet_id,
        reason,
        properties,
    })
}

fn subscribe(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let options = (qos(), any::<bool>(), any::<bool>(), 0..3u8).prop_map(
        move |(qos, no_local, retain_as_published, rh)| {
            if !v.is_v5() {
                return SubscriptionOptions {
                    qos,
                    ..Default::default()
                };
            }
            SubscriptionOptions {
                qos,
                no_local,
                retain_as_published,
                retain_handling: match rh {
                    0 => RetainHandling::SendAtSubscribe,
                    1 => RetainHandling::SendAtSubscribeIfNew,
                    _ => RetainHandling::DoNotSend,
                },
            }
        },
    );
    let filter = (topic_filter(), options).prop_map(|(f, mut o)| {
        // No Local is a protocol error on a shared subscription [MQTT-3.8.3-4].
        if f.starts_with("$share/") {
            o.no_local = false;
        }
        (f, o)
    });
    let sid = if v.is_v5() {
        of(sub_id()).boxed()
    } else {
        Just(None).boxed()
    };
    (pid(), vec(filter, 1..4), sid, props(v, user())).prop_map(
        |(packet_id, filters, subscription_identifier, user_properties)| {
            Packet::Subscribe(Subscribe {
                packet_id,
                filters,
                subscription_identifier,
                user_properties,
            })
        },
    )
}

fn suback(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    use ReasonCode::*;
    let codes = if v.is_v5() {
        reason(SUBACK_REASONS).boxed()
    } else {
        select(vec![Success, GrantedQos1, GrantedQos2, UnspecifiedError]).boxed()
    };
    (pid(), vec(codes, 0..4), ack_props(v)).prop_map(|(packet_id, reasons, properties)| {
        Packet::SubAck(SubAck {
            packet_id,
            reasons,
            properties,
        })
    })
}

fn unsubscribe(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    (pid(), vec(topic_filter(), 1..4), props(v, user())).prop_map(
        |(packet_id, filters, user_properties)| {
            Packet::Unsubscribe(Unsubscribe {
                packet_id,
                filters,
                user_properties,
            })
        },
    )
}

fn unsuback(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let reasons = if v.is_v5() {
        vec(reason(UNSUBACK_REASONS), 0..4).boxed()
    } else {
        Just(Vec::new()).boxed()
    };
    (pid(), reasons, ack_props(v)).prop_map(|(packet_id, reasons, properties)| {
        Packet::UnsubAck(UnsubAck {
            packet_id,
            reasons,
            properties,
        })
    })
}

fn disconnect(v: ProtocolVersion) -> BoxedStrategy<Packet> {
    if !v.is_v5() {
        return Just(Packet::Disconnect(Disconnect::default())).boxed();
    }
    let p = (of(any::<u32>()), of(text()), user(), of(text())).prop_map(|(a, b, c, d)| {
        DisconnectProperties {
            session_expiry_interval: a,
            reason_string: b,
            user_properties: c,
            server_reference: d,
        }
    });
    (reason(DISCONNECT_REASONS), of(p))
        .prop_map(|(reason, properties)| {
            Packet::Disconnect(Disconnect {
                reason,
                properties: properties.unwrap_or_default(),
            })
        })
        .boxed()
}

fn auth() -> impl Strategy<Value = Packet> {
    let p = (authentication(), of(text()), user()).prop_map(|((a, b), c, d)| AuthProperties {
        authentication_method: a,
        authentication_data: b,
        reason_string: c,
        user_properties: d,
    });
    (reason(AUTH_REASONS), of(p)).prop_map(|(reason, properties)| {
        Packet::Auth(Auth {
            reason,
            properties: properties.unwrap_or_default(),
        })
    })
}

/// Any valid packet for `v`, in either direction.
pub(crate) fn packet(v: ProtocolVersion) -> BoxedStrategy<Packet> {
    let common = prop_oneof![
        connect(v),
        connack(v),
        publish(v),
        pub_resp(v, PUBACK_REASONS).prop_map(Packet::PubAck),
        pub_resp(v, PUBACK_REASONS).prop_map(Packet::PubRec),
        pub_resp(v, PUBREL_REASONS).prop_map(Packet::PubRel),
        pub_resp(v, PUBREL_REASONS).prop_map(Packet::PubComp),
        subscribe(v),
        suback(v),
        unsubscribe(v),
        unsuback(v),
        Just(Packet::PingReq),
        Just(Packet::PingResp),
        disconnect(v),
    ];
    if v.is_v5() {
        prop_oneof![13 => common, 1 => auth()].boxed()
    } else {
        common.boxed()
    }
}

/// A version and a valid packet for it.
pub(crate) fn versioned_packet() -> impl Strategy<Value = (ProtocolVersion, Packet)> {
    version().prop_flat_map(|v| packet(v).prop_map(move |p| (v, p)))
}
