//! Basic publish/subscribe over real TCP with the raw client.

mod common;
use common::*;
use roost::codec::{ProtocolVersion, QoS, ReasonCode};

#[tokio::test]
async fn qos0_1_2_roundtrip_v5_and_v311() {
    let b = TestBroker::start().await;
    for version in [
        ProtocolVersion::V5,
        ProtocolVersion::V3_1_1,
        ProtocolVersion::V3_1,
    ] {
        let mut sub = Raw::connected(b.addr, connect(version, "sub", true)).await;
        let ack = sub.subscribe(1, "a/+", QoS::ExactlyOnce).await;
        assert_eq!(ack.reasons, vec![ReasonCode::GrantedQos2]);
        let mut publ = Raw::connected(b.addr, connect(version, "pub", true)).await;
        for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
            .into_iter()
            .enumerate()
        {
            publ.publish(publish("a/b", &format!("m{i}"), qos, 10 + i as u16))
                .await;
            let p = sub.recv_publish().await;
            assert_eq!(p.topic, "a/b");
            assert_eq!(payload(&p), format!("m{i}"));
            assert_eq!(p.qos_pid.qos(), qos);
            sub.ack(&p).await;
        }
        sub.disconnect().await;
        publ.disconnect().await;
    }
    b.stop().await;
}
