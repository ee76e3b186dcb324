//! A client id the transport gave a CONNECT that had none (a TLS client
//! certificate's identity, `ClientIdFrom`): the rules for an empty client
//! id still hold, and a 5.0 client is told the id it got.

use super::*;

#[test]
fn a_v5_client_is_told_the_id_the_transport_gave_it() {
    let mut core = Core::new(Options::default());
    let (_, ack) = core.connect_assigned(v5("dev-1"), true);
    assert_eq!(ack.reason, ReasonCode::Success);
    assert_eq!(
        ack.properties.assigned_client_identifier.as_deref(),
        Some("dev-1")
    );
    // A client that sent an id is not (the id may still be another one:
    // the property is only for an empty id).
    let (_, ack) = core.connect_assigned(v5("dev-2"), false);
    assert_eq!(ack.properties.assigned_client_identifier, None);
}

#[test]
fn the_v3_rules_for_an_empty_id_hold() {
    let mut core = Core::new(Options::default());
    // 3.1.1 with Clean Session 0 and no id of its own ([MQTT-3.1.3-8]).
    let (_, ack) = core.connect_assigned(connect(ProtocolVersion::V3_1_1, "dev-1", false), true);
    assert_eq!(ack.reason, ReasonCode::ClientIdentifierNotValid);
    let (_, ack) = core.connect_assigned(connect(ProtocolVersion::V3_1_1, "dev-1", true), true);
    assert_eq!(ack.reason, ReasonCode::Success);
    let (_, ack) = core.connect_assigned(connect(ProtocolVersion::V3_1, "dev-1", true), true);
    assert_eq!(ack.reason, ReasonCode::ClientIdentifierNotValid);
}

#[test]
fn an_assigned_id_is_held_to_the_length_limit() {
    let mut opts = Options::default();
    opts.limits.maximum_client_id_len = 4;
    let mut core = Core::new(opts);
    let (_, ack) = core.connect_assigned(v5("dev-12"), true);
    assert_eq!(ack.reason, ReasonCode::ClientIdentifierNotValid);
}
