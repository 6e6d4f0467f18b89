//! One contract, two backends: every test here runs against the embedded store and log bus
//! (files) and against Redis (a real `redis-server` the test starts on a Unix socket).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use gitdeploy_api::store::{AliasChange, Write};
use gitdeploy_api::{
    ApiMetrics, Deployment, FileLogBus, FileStore, Follower, LogBus, Project, ProjectError,
    Records, RedisLogBus, RedisLogSettings, RedisStore, Store,
};
use gitdeploy_core::job::{BuildSettings, ServingOptions};
use gitdeploy_core::{DeploymentId, DeploymentStatus, LogStream, Outcome};

enum Backend {
    Files(tempfile::TempDir),
    Redis(common::Redis),
}

impl Backend {
    fn all() -> Vec<Backend> {
        vec![
            Backend::Files(tempfile::tempdir().unwrap()),
            Backend::Redis(common::Redis::start()),
        ]
    }

    fn name(&self) -> &'static str {
        match self {
            Backend::Files(_) => "files",
            Backend::Redis(_) => "redis",
        }
    }

    async fn store(&self) -> Arc<dyn Store> {
        match self {
            Backend::Files(dir) => Arc::new(FileStore::open(&dir.path().join("state")).unwrap()),
            Backend::Redis(r) => Arc::new(RedisStore::connect(&r.url, "t:").await.unwrap()),
        }
    }

    async fn bus(&self) -> Arc<dyn LogBus> {
        match self {
            Backend::Files(dir) => Arc::new(
                FileLogBus::open(&dir.path().join("logs"), ApiMetrics::unregistered()).unwrap(),
            ),
            Backend::Redis(r) => Arc::new(
                RedisLogBus::connect(
                    &r.url,
                    RedisLogSettings {
                        prefix: "t:".into(),
                        ttl: Duration::from_secs(60),
                        max_len: 100_000,
                    },
                    ApiMetrics::unregistered(),
                )
                .await
                .unwrap(),
            ),
        }
    }
}

fn id(n: u32) -> DeploymentId {
    DeploymentId::parse(&format!("dep{n:08}x")).unwrap()
}

fn deployment(n: u32, project: Option<&str>, at: u64) -> Deployment {
    Deployment {
        id: id(n),
        project: project.map(str::to_owned),
        repo: "https://example.com/r".into(),
        git_ref: None,
        serving: ServingOptions::default(),
        build: BuildSettings::default(),
        status: DeploymentStatus::Queued,
        error: None,
        commit: None,
        created_unix_ms: at,
        started_unix_ms: None,
        finished_unix_ms: None,
        runner: Some("runner-a".into()),
        cancel_requested: false,
        previous_commit: None,
        skip_reason: None,
        source: Default::default(),
        archive: None,
        trigger: Default::default(),
        pinned: false,
        repo_credentials_withheld: false,
    }
}

fn ids(list: &[Deployment]) -> Vec<DeploymentId> {
    list.iter().map(|d| d.id.clone()).collect()
}

#[tokio::test]
async fn store_contract() {
    for backend in Backend::all() {
        let name = backend.name();
        let store = backend.store().await;
        let records = Records::new(store.clone());
        let mut aliases = store.alias_changes();
        if let Backend::Redis(_) = backend {
            // The subscription announces itself once it is in place.
            assert_eq!(
                aliases.recv().await.unwrap(),
                AliasChange::MaybeMissed,
                "{name}"
            );
        }

        // Insert, get, list newest first, per project; ids are never reused.
        records
            .insert(deployment(1, Some("site"), 10))
            .await
            .unwrap();
        records.insert(deployment(2, None, 30)).await.unwrap();
        records
            .insert(deployment(3, Some("site"), 20))
            .await
            .unwrap();
        assert!(
            records.insert(deployment(1, None, 5)).await.is_err(),
            "{name}"
        );
        assert_eq!(
            records.get(&id(1)).await.unwrap().unwrap().created_unix_ms,
            10
        );
        assert!(records.get(&id(9)).await.unwrap().is_none());
        assert_eq!(
            ids(&records.list(10).await.unwrap()),
            [id(2), id(3), id(1)],
            "{name}"
        );
        assert_eq!(ids(&records.list(1).await.unwrap()), [id(2)]);
        assert_eq!(
            ids(&records.list_project("site", 10).await.unwrap()),
            [id(3), id(1)]
        );
        assert_eq!(records.list(0).await.unwrap().len(), 0);

        // A stale write changes nothing, and a commit is all or nothing.
        let v = store.deployment(&id(1)).await.unwrap().unwrap();
        let mut changed = v.value.clone();
        changed.status = DeploymentStatus::Building;
        assert!(store
            .commit(vec![Write::Deployment {
                expect: v.version,
                value: changed.clone()
            }])
            .await
            .unwrap());
        let stale = Write::Deployment {
            expect: v.version,
            value: v.value.clone(),
        };
        let fresh = Write::Deployment {
            expect: store.deployment(&id(2)).await.unwrap().unwrap().version,
            value: Deployment {
                error: Some("x".into()),
                ..deployment(2, None, 30)
            },
        };
        assert!(!store.commit(vec![fresh, stale]).await.unwrap(), "{name}");
        assert_eq!(
            records.get(&id(1)).await.unwrap().unwrap().status,
            DeploymentStatus::Building
        );
        assert_eq!(
            records.get(&id(2)).await.unwrap().unwrap().error,
            None,
            "{name}: not applied"
        );

        // Active: queued and building only.
        let mut active = ids(&store.active().await.unwrap());
        active.sort();
        assert_eq!(active, [id(1), id(2), id(3)]);

        // Projects: create once, ensure for the same repository only.
        let p = records
            .create_project(Project::new("site", "https://example.com/r", None, 1))
            .await
            .unwrap();
        assert_eq!(p.name, "site");
        assert!(matches!(
            records
                .create_project(Project::new("site", "https://example.com/r", None, 2))
                .await,
            Err(ProjectError::Exists(_))
        ));
        assert!(matches!(
            records
                .ensure_project("site", "https://example.com/other", None, 3)
                .await,
            Err(ProjectError::OtherRepo { .. })
        ));
        records
            .ensure_project("blog", "https://example.com/b", Some("main"), 4)
            .await
            .unwrap();
        let names: Vec<_> = records
            .projects()
            .await
            .unwrap()
            .into_iter()
            .map(|p| p.name)
            .collect();
        assert_eq!(names, ["blog", "site"], "{name}");

        // Finishing a build of the production branch promotes it in the same commit, and the
        // change is announced: at once to this process (the generation grows before the commit
        // returns), and on the channel.
        let generation = store.alias_generation();
        let done = records
            .finish(
                &id(1),
                |d| d.status = DeploymentStatus::Ready,
                |d, p| p.is_production_ref(d.git_ref.as_deref()),
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(done.deployment.status, DeploymentStatus::Ready);
        assert_eq!(done.promoted.unwrap().production, Some(id(1)));
        assert_eq!(
            records.project("site").await.unwrap().unwrap().production,
            Some(id(1))
        );
        assert!(
            store.alias_generation() > generation,
            "{name}: generation did not grow"
        );
        let announced = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let n = aliases.recv().await.unwrap();
                if n == AliasChange::Production("site".into()) {
                    return n;
                }
            }
        })
        .await;
        assert!(announced.is_ok(), "{name}: alias change not announced");
        // An ended build stays as it ended.
        let again = records
            .finish(&id(1), |d| d.status = DeploymentStatus::Failed, |_, _| true)
            .await
            .unwrap();
        assert!(again.is_none(), "{name}");
        assert_eq!(
            records.get(&id(1)).await.unwrap().unwrap().status,
            DeploymentStatus::Ready
        );
        assert!(!ids(&store.active().await.unwrap()).contains(&id(1)));

        // A preview alias moving to a build is announced like a production move; a write that
        // changes nothing the edges serve is not (a renewed generation would cost every cache).
        let generation = store.alias_generation();
        let source = gitdeploy_api::previews::PreviewSource::Branch("feature/x".into());
        records
            .update_project("site", |p| {
                p.open_preview(&source, 1);
                p.move_preview(&source, &id(1), 1);
                Ok::<_, gitdeploy_api::StoreError>(())
            })
            .await
            .unwrap();
        assert!(
            store.alias_generation() > generation,
            "{name}: a preview move is announced"
        );
        let announced = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if aliases.recv().await.unwrap() == AliasChange::Production("site".into()) {
                    return;
                }
            }
        })
        .await;
        assert!(announced.is_ok(), "{name}: preview move not announced");
        let generation = store.alias_generation();
        records
            .update_project("site", |p| {
                p.webhook_secret = Some("another-secret-0123456789".into());
                Ok::<_, gitdeploy_api::StoreError>(())
            })
            .await
            .unwrap();
        assert_eq!(
            store.alias_generation(),
            generation,
            "{name}: nothing served changed"
        );

        // Concurrent writers to one record lose nothing (versions + retry).
        let mut tasks = Vec::new();
        for n in 100..120 {
            let records = records.clone();
            tasks.push(tokio::spawn(async move {
                records.set_production("blog", &id(n)).await.unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let blog = records.project("blog").await.unwrap().unwrap();
        let mut seen: Vec<_> = blog.history.clone();
        seen.extend(blog.production.clone());
        seen.sort();
        assert_eq!(
            seen,
            (100..120).map(id).collect::<Vec<_>>(),
            "{name}: lost updates"
        );

        // Rollback walks back to the last production deployment that is still ready.
        records.set_production("site", &id(3)).await.unwrap();
        let back = records.rollback("site").await.unwrap().unwrap();
        assert_eq!(back.production, Some(id(1)), "{name}");
        let nothing = records.rollback("site").await.unwrap().unwrap();
        assert_eq!(nothing.production, Some(id(1)), "{name}: nothing earlier");
        assert!(records.rollback("nope").await.unwrap().is_none());

        // Delete removes the record from every listing.
        assert!(records.delete(&id(3)).await.unwrap());
        assert!(!records.delete(&id(3)).await.unwrap());
        assert_eq!(
            ids(&records.list_project("site", 10).await.unwrap()),
            [id(1)],
            "{name}"
        );
        assert!(!ids(&store.active().await.unwrap()).contains(&id(3)));

        // Deleting a project removes it and announces it.
        let generation = store.alias_generation();
        records
            .create_project(Project::new("gone", "https://example.com/g", None, 9))
            .await
            .unwrap();
        assert!(records.delete_project("gone").await.unwrap(), "{name}");
        assert!(!records.delete_project("gone").await.unwrap());
        assert!(records.project("gone").await.unwrap().is_none());
        assert!(store.alias_generation() > generation, "{name}");
        assert!(!records
            .projects()
            .await
            .unwrap()
            .iter()
            .any(|p| p.name == "gone"));

        // Custom domains: one project each, in their normalized form, announced, removed with
        // their project.
        use gitdeploy_api::domains::{DomainRefusal, DomainStatus};
        records
            .ensure_project("shop", "https://example.com/s", None, 6)
            .await
            .unwrap();
        let mut aliases = store.alias_changes();
        let d = records
            .add_domain("shop", "WWW.Bücher.example.org.", "sites.test", 7)
            .await
            .unwrap();
        assert_eq!(d.domain, "www.xn--bcher-kva.example.org", "{name}");
        assert_eq!(d.status, DomainStatus::PendingDns);
        let announced = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if aliases.recv().await.unwrap()
                    == AliasChange::Domain("www.xn--bcher-kva.example.org".into())
                {
                    return;
                }
            }
        })
        .await;
        assert!(announced.is_ok(), "{name}: domain change not announced");
        for (project, input, refused) in [
            (
                "shop",
                "www.bücher.example.org",
                "already a domain of this project",
            ),
            (
                "blog",
                "www.xn--bcher-kva.example.org",
                "belongs to another project",
            ),
            ("blog", "blog.sites.test", "platform's own domain"),
            ("nope", "a.example.org", "no project"),
        ] {
            let e = records
                .add_domain(project, input, "sites.test", 8)
                .await
                .unwrap_err();
            assert!(e.to_string().contains(refused), "{name}: {input}: {e}");
        }
        // Two projects racing for one name: exactly one wins.
        let (a, b) = tokio::join!(
            records.add_domain("shop", "race.example.org", "sites.test", 9),
            records.add_domain("blog", "race.example.org", "sites.test", 9),
        );
        assert!(a.is_ok() != b.is_ok(), "{name}: {a:?} {b:?}");
        records
            .add_domain("blog", "blog.example.org", "sites.test", 10)
            .await
            .unwrap();
        let listed = |p: &'static str| {
            let records = records.clone();
            async move {
                records
                    .project_domains(p)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|d| d.domain)
                    .collect::<Vec<_>>()
            }
        };
        assert!(listed("shop")
            .await
            .contains(&"www.xn--bcher-kva.example.org".to_owned()));
        assert!(listed("blog")
            .await
            .contains(&"blog.example.org".to_owned()));
        assert!(matches!(
            records
                .remove_domain("shop", "blog.example.org", "sites.test")
                .await,
            Err(DomainRefusal::NotFound(_))
        ));
        records
            .remove_domain("blog", "BLOG.example.org", "sites.test")
            .await
            .unwrap();
        assert!(!listed("blog")
            .await
            .contains(&"blog.example.org".to_owned()));
        assert!(records.delete_project("shop").await.unwrap());
        assert!(listed("shop").await.is_empty(), "{name}");
        assert!(records
            .domain("www.xn--bcher-kva.example.org")
            .await
            .unwrap()
            .is_none());

        // Heartbeats expire.
        store.heartbeat("runner-a", 60_000).await.unwrap();
        store.heartbeat("runner-b", 1).await.unwrap();
        assert!(store.runner_alive("runner-a").await.unwrap());
        assert!(!store.runner_alive("runner-c").await.unwrap());
        let deadline = Instant::now() + Duration::from_secs(10);
        while store.runner_alive("runner-b").await.unwrap() {
            assert!(Instant::now() < deadline, "{name}: heartbeat never expired");
            tokio::task::yield_now().await;
        }

        // A second handle on the same backend sees the same state (a restart, another edge).
        let reopened = Records::new(backend.store().await);
        assert_eq!(
            ids(&reopened.list(10).await.unwrap()),
            [id(2), id(1)],
            "{name}"
        );
        assert_eq!(
            reopened.project("site").await.unwrap().unwrap().production,
            Some(id(1))
        );
    }
}

fn ready() -> Outcome {
    Outcome {
        status: DeploymentStatus::Ready,
        error: None,
        skip_reason: None,
        exit_code: Some(0),
        duration_ms: None,
        files: None,
        bytes: None,
    }
}

async fn drain(mut f: Follower) -> Vec<u64> {
    let mut seqs = Vec::new();
    while let Some(r) = f.next().await.unwrap() {
        seqs.push(r.seq);
    }
    seqs
}

#[tokio::test]
async fn log_bus_contract() {
    for backend in Backend::all() {
        let name = backend.name();
        let bus = backend.bus().await;
        let log = id(7);

        // A log that was never created ends at once.
        assert!(
            bus.follow(&id(8), 0)
                .await
                .unwrap()
                .next()
                .await
                .unwrap()
                .is_none(),
            "{name}"
        );

        bus.create(&log).await.unwrap();
        let early = tokio::spawn(drain(bus.follow(&log, 0).await.unwrap()));
        // 200 followers of one build, all joined before the first line.
        let crowd: Vec<_> = {
            let mut v = Vec::new();
            for _ in 0..200 {
                v.push(tokio::spawn(drain(bus.follow(&log, 0).await.unwrap())));
            }
            v
        };
        for i in 0..3 {
            let r = bus
                .append(&log, 0, LogStream::Stdout, format!("line {i}"))
                .await
                .unwrap();
            assert_eq!(r.seq, i, "{name}");
        }
        let middle = tokio::spawn(drain(bus.follow(&log, 0).await.unwrap()));
        let resumed = tokio::spawn(drain(bus.follow(&log, 2).await.unwrap()));
        // More lines than a live buffer holds: slow followers catch up from the log.
        for i in 3..2100u64 {
            bus.append(&log, 0, LogStream::Stderr, format!("line {i}"))
                .await
                .unwrap();
        }
        let last = bus.finish(&log, 0, "done".into(), ready()).await.unwrap();
        let all: Vec<u64> = (0..=last.seq).collect();
        assert_eq!(early.await.unwrap(), all, "{name}: early");
        assert_eq!(middle.await.unwrap(), all, "{name}: middle");
        assert_eq!(resumed.await.unwrap(), all[2..].to_vec(), "{name}: resumed");
        for follower in crowd {
            assert_eq!(follower.await.unwrap(), all, "{name}: one of 200");
        }
        // After the end: the whole log, once; and nothing more can be written.
        assert_eq!(
            drain(bus.follow(&log, 0).await.unwrap()).await,
            all,
            "{name}: late"
        );
        assert_eq!(
            drain(bus.follow(&log, 2000).await.unwrap()).await,
            all[2000..].to_vec()
        );
        assert!(
            bus.append(&log, 0, LogStream::Stdout, "late".into())
                .await
                .is_err(),
            "{name}"
        );
        let read = bus.read(&log, 2095).await.unwrap();
        assert_eq!(
            read.iter().map(|r| r.seq).collect::<Vec<_>>(),
            all[2095..].to_vec()
        );
        assert!(read.last().unwrap().is_final());

        // Another handle (a restart, another edge) reads the same log, and a new writer
        // continues a log it did not start.
        let other = backend.bus().await;
        assert_eq!(
            drain(other.follow(&log, 0).await.unwrap()).await,
            all,
            "{name}: other"
        );
        let next = id(9);
        bus.create(&next).await.unwrap();
        bus.append(&next, 0, LogStream::System, "first".into())
            .await
            .unwrap();
        let r = other
            .append(&next, 0, LogStream::System, "second".into())
            .await
            .unwrap();
        assert_eq!(r.seq, 1, "{name}");
    }
}

#[tokio::test]
async fn traffic_contract() {
    use gitdeploy_api::traffic::{
        bucket_of, summarize, Counts, Delta, FileTraffic, TrafficStore, DAY_BUCKETS,
    };
    for backend in Backend::all() {
        let name = backend.name();
        let traffic: Arc<dyn TrafficStore> = match &backend {
            Backend::Files(_) => Arc::new(FileTraffic::default()),
            Backend::Redis(r) => Arc::new(
                RedisStore::connect(&r.url, "t:")
                    .await
                    .unwrap()
                    .traffic_store(),
            ),
        };
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let now = bucket_of(now_ms);
        let delta = |project: &str, bucket: u64, requests: u64, paths: &[(&str, u64)]| Delta {
            project: project.into(),
            bucket,
            counts: Counts {
                requests,
                bytes: requests * 100,
                status: [0, requests - 1, 0, 1, 0],
            },
            paths: paths.iter().map(|(p, n)| (p.to_string(), *n)).collect(),
        };
        // Two edges flush into the same bucket at once; a third an hour ago.
        let a = [delta("site", now, 10, &[("/", 7), ("/a", 3)])];
        let b = [
            delta("site", now, 5, &[("/", 1), ("/b", 4)]),
            delta("other", now, 2, &[("/x", 2)]),
        ];
        let (ra, rb) = tokio::join!(traffic.add(&a), traffic.add(&b));
        ra.unwrap();
        rb.unwrap();
        traffic
            .add(&[delta("site", now - 13, 20, &[("/old", 20)])])
            .await
            .unwrap();
        let buckets = traffic
            .buckets("site", now + 1 - DAY_BUCKETS)
            .await
            .unwrap();
        assert_eq!(buckets.len(), 2, "{name}: {buckets:?}");
        let s = summarize(&buckets, now_ms);
        assert_eq!(s.hour.requests, 15, "{name}");
        assert_eq!(s.hour.bytes, 1500, "{name}");
        assert_eq!(s.day.requests, 35, "{name}");
        let hour: Vec<(&str, u64)> = s
            .hour
            .top_paths
            .iter()
            .map(|p| (p.path.as_str(), p.requests))
            .collect();
        assert_eq!(hour, [("/", 8), ("/b", 4), ("/a", 3)], "{name}");
        assert_eq!(s.day.top_paths[0].path, "/old", "{name}");
        let json = serde_json::to_value(&s.hour.status).unwrap();
        assert_eq!(json["2xx"], 13, "{name}");
        assert_eq!(json["4xx"], 2, "{name}");
        // Projects are apart; a project without traffic has none.
        let other = traffic.buckets("other", now - 1).await.unwrap();
        assert_eq!(other.len(), 1, "{name}");
        assert!(traffic.buckets("none", now - 1).await.unwrap().is_empty());
        // Only buckets from `since` on.
        assert_eq!(
            traffic.buckets("site", now).await.unwrap().len(),
            1,
            "{name}"
        );
    }
}

#[tokio::test]
async fn journal_and_documents_contract() {
    use gitdeploy_api::journal::{FileJournal, Journal};
    use serde_json::json;
    for backend in Backend::all() {
        let name = backend.name();
        let journal: Arc<dyn Journal> = match &backend {
            Backend::Files(dir) => Arc::new(FileJournal::open(&dir.path().join("j")).unwrap()),
            Backend::Redis(r) => {
                Arc::new(RedisStore::connect(&r.url, "t:").await.unwrap().journal())
            }
        };
        // Appended entries come back newest first, the newest `keep` of them.
        let keep = gitdeploy_api::journal::DELIVERIES_KEEP as u64;
        for n in 0..keep + 15 {
            journal
                .append("deliveries:a", &json!({"n": n}))
                .await
                .unwrap();
        }
        journal
            .append("deliveries:site", &json!({"n": "other"}))
            .await
            .unwrap();
        let recent = journal.recent("deliveries:a", 1_000).await.unwrap();
        let ns: Vec<u64> = recent.iter().map(|v| v["n"].as_u64().unwrap()).collect();
        assert_eq!(ns, (15..keep + 15).rev().collect::<Vec<_>>(), "{name}");
        assert_eq!(
            journal.recent("deliveries:a", 3).await.unwrap().len(),
            3,
            "{name}"
        );
        assert_eq!(
            journal.recent("deliveries:site", 10).await.unwrap().len(),
            1,
            "{name}"
        );
        assert!(
            journal
                .recent("deliveries:none", 10)
                .await
                .unwrap()
                .is_empty(),
            "{name}"
        );
        assert!(
            journal.append("../escape", &json!({})).await.is_err(),
            "{name}"
        );
        // A key is new once; a repeat within its time is not; after it, it is new again.
        assert!(
            journal.first_time("delivery-1", 60_000).await.unwrap(),
            "{name}"
        );
        assert!(
            !journal.first_time("delivery-1", 60_000).await.unwrap(),
            "{name}"
        );
        assert!(journal.first_time("delivery-2", 1).await.unwrap(), "{name}");
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            journal.first_time("delivery-2", 60_000).await.unwrap(),
            "{name}"
        );
        // Entries and seen keys outlive a restart of the embedded journal.
        if let Backend::Files(dir) = &backend {
            let reopened = FileJournal::open(&dir.path().join("j")).unwrap();
            assert_eq!(
                reopened.recent("deliveries:a", 1_000).await.unwrap(),
                recent,
                "{name}"
            );
            assert!(
                !reopened.first_time("delivery-1", 60_000).await.unwrap(),
                "{name}"
            );
        }

        // Documents: versioned, created once, replaced only at the version read.
        let store = backend.store().await;
        assert!(store.doc("tokens").await.unwrap().is_none(), "{name}");
        let write = |expect, value| Write::Doc {
            name: "tokens",
            expect,
            value,
        };
        assert!(
            store.commit(vec![write(0, json!({"a": 1}))]).await.unwrap(),
            "{name}"
        );
        assert!(
            !store.commit(vec![write(0, json!({"a": 2}))]).await.unwrap(),
            "{name}"
        );
        let doc = store.doc("tokens").await.unwrap().unwrap();
        assert_eq!(doc.value, json!({"a": 1}), "{name}");
        assert!(
            store
                .commit(vec![write(doc.version, json!({"a": 3}))])
                .await
                .unwrap(),
            "{name}"
        );
        assert_eq!(
            store.doc("tokens").await.unwrap().unwrap().value["a"],
            3,
            "{name}"
        );
        // Named tokens on it: made, found by their secret's hash, revoked.
        let records = Records::new(store.clone());
        store
            .commit(vec![write(
                store.doc("tokens").await.unwrap().unwrap().version,
                json!({"tokens": []}),
            )])
            .await
            .unwrap();
        let (token, secret) = records
            .create_token(
                "ci",
                vec![gitdeploy_api::tokens::Scope::Deploy],
                None,
                "test".into(),
            )
            .await
            .unwrap();
        let hash = gitdeploy_api::token_sha256(&secret);
        assert_eq!(
            records.token_by_hash(&hash).await.unwrap(),
            Some(token.clone()),
            "{name}"
        );
        assert!(
            records
                .create_token("ci", vec![], None, "test".into())
                .await
                .is_err(),
            "{name}: names are unique"
        );
        assert!(records.revoke_token(&token.id).await.unwrap(), "{name}");
        assert_eq!(records.token_by_hash(&hash).await.unwrap(), None, "{name}");
        assert!(!records.revoke_token(&token.id).await.unwrap(), "{name}");
        if let Backend::Files(dir) = &backend {
            let reopened = FileStore::open(&dir.path().join("state")).unwrap();
            assert!(reopened.doc("tokens").await.unwrap().is_some(), "{name}");
        }
    }
}
