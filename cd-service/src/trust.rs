//! What cd-service trusts: a build event only when ci-service's key signed it on its app's build
//! subject, a promotion or replay only when cd-service's own key signed it on the deploy
//! subject. Every event passes [`Trust::check`] before anything reads its image, in the
//! consumer and when promotions and replays look for an earlier event, so no path deploys an
//! image that a verified build did not produce. Holds cd-service's signing key for its own
//! promotions and replays. Never reads files or the network.

use async_nats::HeaderMap;
use conveyor_proto::{
    headers,
    signing::{EventSigner, TrustedKeys},
    ImageBuilt,
};

pub struct Trust {
    /// ci-service's public keys: build events.
    builds: TrustedKeys,
    /// cd-service's own public key and any older ones: promotions and replays.
    intents: TrustedKeys,
    signer: EventSigner,
}

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trust").field("builds", &self.builds).field("intents", &self.intents).field("signer", &self.signer).finish()
    }
}

impl Trust {
    /// `builds`: ci-service's keys; `signer`: this service's key (its public half is trusted for
    /// intents, with `older_intent_keys` while rotating).
    pub fn new(builds: TrustedKeys, signer: EventSigner, older_intent_keys: Option<TrustedKeys>) -> Self {
        let mut intents = signer.public();
        if let Some(older) = older_intent_keys {
            intents.extend(&older);
        }
        Self { builds, intents, signer }
    }

    /// The key promotions and replays are signed with.
    pub fn signer(&self) -> &EventSigner {
        &self.signer
    }

    /// Ids of the keys trusted for builds and for intents (for the start-up log).
    pub fn key_ids(&self) -> (Vec<&str>, Vec<&str>) {
        (self.builds.ids(), self.intents.ids())
    }

    /// Whether `event`, parsed from `payload` that arrived on `subject` with `headers`, may be
    /// applied; the error is the reason a person reads (dead letter, `/outcomes`).
    pub fn check(&self, subject: &str, headers: Option<&HeaderMap>, payload: &[u8], event: &ImageBuilt) -> Result<(), String> {
        let expected = event.subject();
        if subject != expected {
            let what = if event.deploy.is_some() { "a promotion or replay" } else { "a build event" };
            return Err(format!("{what} of app {} arrived on subject {subject}, not {expected}", event.app));
        }
        let (keys, kind) = match event.deploy {
            None => (&self.builds, "build events (ci-service's keys)"),
            Some(_) => (&self.intents, "promotions and replays (cd-service's keys)"),
        };
        let header = |name: &str| headers.and_then(|h| h.get(name)).map(|v| v.as_str());
        keys.verify(kind, subject, payload, header(headers::KEY_ID), header(headers::SIGNATURE)).map(|_| ()).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(deploy: bool) -> ImageBuilt {
        let json = serde_json::json!({
            "version": 1, "event_id": "e1", "app": "web",
            "image": { "repository": "r.example/web", "tag": "v1", "digest": format!("sha256:{}", "a".repeat(64)) },
            "source": { "repo_url": "/srv/web.git", "commit": "b".repeat(40), "branch": "main" },
            "build_id": "1", "build_started_at": "2026-12-01T00:00:00Z", "built_at": "2026-12-01T00:00:01Z",
        });
        let mut e: ImageBuilt = serde_json::from_value(json).unwrap();
        if deploy {
            e.deploy = Some(conveyor_proto::DeployIntent {
                kind: conveyor_proto::IntentKind::Promotion,
                environment: "production".into(),
                requested_by: "alice".into(),
                of_event: "e1".into(),
                of_sequence: None,
                of_traceparent: None,
            });
        }
        e
    }

    fn signed(signer: &EventSigner, subject: &str, payload: &[u8]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in signer.headers(subject, payload) {
            h.insert(k, v.as_str());
        }
        h
    }

    #[test]
    fn builds_need_the_ci_key_and_intents_the_cd_key() {
        let (ci, cd) = (EventSigner::from_seed([1; 32]), EventSigner::from_seed([2; 32]));
        let trust = Trust::new(ci.public(), cd.clone(), None);
        let build = event(false);
        let payload = build.to_json().unwrap();
        let subject = build.subject();
        assert_eq!(trust.check(&subject, Some(&signed(&ci, &subject, &payload)), &payload, &build), Ok(()));
        let by_cd = trust.check(&subject, Some(&signed(&cd, &subject, &payload)), &payload, &build).unwrap_err();
        assert!(by_cd.contains("not trusted for build events"), "{by_cd}");
        assert!(trust.check(&subject, None, &payload, &build).unwrap_err().starts_with("unsigned event"));

        let promo = event(true);
        let payload = promo.to_json().unwrap();
        let subject = promo.subject();
        assert_eq!(trust.check(&subject, Some(&signed(&cd, &subject, &payload)), &payload, &promo), Ok(()));
        let by_ci = trust.check(&subject, Some(&signed(&ci, &subject, &payload)), &payload, &promo).unwrap_err();
        assert!(by_ci.contains("not trusted for promotions"), "{by_ci}");
    }

    #[test]
    fn an_intent_on_the_build_subject_is_refused_even_when_signed_by_ci() {
        let (ci, cd) = (EventSigner::from_seed([1; 32]), EventSigner::from_seed([2; 32]));
        let trust = Trust::new(ci.public(), cd, None);
        let promo = event(true);
        let payload = promo.to_json().unwrap();
        let subject = conveyor_proto::subject_for_app("web");
        let err = trust.check(&subject, Some(&signed(&ci, &subject, &payload)), &payload, &promo).unwrap_err();
        assert!(err.contains("arrived on subject conveyor.images.built.web"), "{err}");
    }
}
