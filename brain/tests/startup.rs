//! The brain starts on nothing but a data directory and keeps its
//! identity across restarts.

mod common;

use common::*;

#[tokio::test]
async fn bootstrap_user_exists_once_and_the_spine_certificate_persists() {
    let tb = TestBrain::start().await;
    let fingerprint = tb.brain.fingerprint;
    {
        let model = tb.brain.db.read();
        assert_eq!(model.users.len(), 1);
        let su = model.user_named(SU_USER).unwrap();
        assert!(bigv_brain::password::verify(
            SU_PASSWORD,
            su.password_hash.as_deref().unwrap()
        ));
    }
    let tb = tb.restart().await;
    assert_eq!(tb.brain.fingerprint, fingerprint, "nodes' pins would break");
    assert_eq!(tb.brain.db.read().users.len(), 1, "bootstrap ran twice");
}
