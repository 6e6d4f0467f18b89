//! The ECS runner against a real ECS API: moto's server (PyPI `moto[server]`, installed by
//! `scripts/prereqs --test`), with state and logs in a real `redis-server`. moto runs no
//! containers, so the test plays the part of the task where one would act.

mod common;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_ecs::types::{Compatibility, ContainerDefinition, NetworkMode};
use gitdeploy_api::ecs::{DEPLOYMENT_ENV, DEPLOYMENT_TAG, STARTED_BY};
use gitdeploy_api::{
    ApiMetrics, Deployment, EcsRunner, EcsRunnerConfig, JobQueue, LogBus, Records, RedisLogBus,
    RedisLogSettings, RedisStore, Store, TaskAccess,
};
use gitdeploy_core::job::{BuildLimits, BuildSettings, ServingOptions};
use gitdeploy_core::{BuildJob, DeploymentId, DeploymentStatus};
use gitdeploy_harness::{free_port, wait_for_port, Process};

/// A test tool from PyPI at the version `scripts/prereqs --test` pins, in the project's own
/// virtualenv (never whatever version the machine happens to carry).
fn test_tool(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../.tools/venv/bin")
        .join(name)
}

fn moto() -> (Process, String) {
    let port = free_port();
    let mut moto = Process::spawn(
        Command::new(test_tool("moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
        "moto_server (installed in .tools/venv by scripts/prereqs --test)",
    );
    wait_for_port(([127, 0, 0, 1], port).into(), &mut moto, "moto_server");
    // Tasks stay RUNNING until stopped (by default moto moves them on at every describe).
    let script = format!(
        "import requests\n\
         r = requests.post('http://127.0.0.1:{port}/moto-api/state-manager/set-transition', \
         json={{'model_name': 'ecs::task', 'transition': {{'progression': 'manual', 'times': 1000000}}}})\n\
         r.raise_for_status()\n"
    );
    let out = Command::new(test_tool("python3"))
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (moto, format!("http://127.0.0.1:{port}"))
}

/// The default VPC's first subnet and security group (moto creates them), via boto3.
fn default_network(endpoint: &str) -> (String, String) {
    let script = format!(
        "import boto3\n\
         ec2 = boto3.client('ec2', endpoint_url='{endpoint}', region_name='us-east-1', \
         aws_access_key_id='test', aws_secret_access_key='test')\n\
         vpc = ec2.describe_vpcs(Filters=[{{'Name': 'is-default', 'Values': ['true']}}])['Vpcs'][0]['VpcId']\n\
         sub = ec2.describe_subnets(Filters=[{{'Name': 'vpc-id', 'Values': [vpc]}}])['Subnets'][0]['SubnetId']\n\
         sg = ec2.describe_security_groups(Filters=[{{'Name': 'vpc-id', 'Values': [vpc]}}])['SecurityGroups'][0]['GroupId']\n\
         print(sub, sg)\n"
    );
    let out = Command::new(test_tool("python3"))
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut parts = text.split_whitespace();
    (
        parts.next().unwrap().to_owned(),
        parts.next().unwrap().to_owned(),
    )
}

fn ecs_client(endpoint: &str) -> aws_sdk_ecs::Client {
    let config = aws_sdk_ecs::Config::builder()
        .behavior_version(aws_sdk_ecs::config::BehaviorVersion::latest())
        .region(aws_sdk_ecs::config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_ecs::config::Credentials::new(
            "test", "test", None, None, "test",
        ))
        .build();
    aws_sdk_ecs::Client::from_conf(config)
}

fn runner_config(cluster: &str, subnet: &str, sg: &str) -> EcsRunnerConfig {
    EcsRunnerConfig {
        cluster: cluster.into(),
        task_definition: "gitdeploy-builder".into(),
        container: "builder".into(),
        capacity_provider: None,
        launch_type: "FARGATE".into(),
        subnets: vec![subnet.into()],
        security_groups: vec![sg.into()],
        assign_public_ip: false,
        env: vec![("GITDEPLOY_S3_BUCKET".into(), "sites".into())],
        concurrency: 4,
        max_queued: 10,
        limits: BuildLimits::default(),
        poll_interval: Duration::from_millis(50),
        heartbeat: Duration::from_millis(200),
        run_attempts: 2,
        scoped_redis_users: true,
        upload_role_arn: None,
    }
}

/// Keeps archived logs in memory; no build here stages an upload (the tasks never run: moto
/// runs no containers).
#[derive(Default)]
struct MemoryArchive(std::sync::Mutex<std::collections::HashMap<DeploymentId, Vec<u8>>>);

impl gitdeploy_api::BuildArchive for MemoryArchive {
    fn archive(&self, id: &DeploymentId, ndjson: Vec<u8>) -> gitdeploy_api::ArchiveFuture<'_, ()> {
        self.0.lock().unwrap().insert(id.clone(), ndjson);
        Box::pin(async { Ok(()) })
    }

    fn fetch(&self, id: &DeploymentId) -> gitdeploy_api::ArchiveFuture<'_, Option<Vec<u8>>> {
        let found = self.0.lock().unwrap().get(id).cloned();
        Box::pin(async move { Ok(found) })
    }

    fn publish_staged(&self, _id: &DeploymentId) -> gitdeploy_api::ArchiveFuture<'_, bool> {
        Box::pin(async { Ok(false) })
    }
}

struct Platform {
    records: Records,
    bus: Arc<dyn LogBus>,
    store: Arc<RedisStore>,
    archive: Arc<MemoryArchive>,
}

impl Platform {
    async fn connect(url: &str) -> Platform {
        let store = Arc::new(RedisStore::connect(url, "ecs:").await.unwrap());
        let bus = RedisLogBus::connect(
            url,
            RedisLogSettings {
                prefix: "ecs:".into(),
                ttl: Duration::from_secs(60),
                max_len: 1000,
            },
            ApiMetrics::unregistered(),
        )
        .await
        .unwrap();
        Platform {
            records: Records::new(store.clone() as Arc<dyn Store>),
            bus: Arc::new(bus),
            store,
            archive: Arc::default(),
        }
    }

    fn runner(
        &self,
        config: EcsRunnerConfig,
        client: aws_sdk_ecs::Client,
    ) -> (EcsRunner, JobQueue) {
        let (runner, queue) = EcsRunner::new(
            config,
            client,
            self.records.clone(),
            self.bus.clone(),
            Some(self.store.clone() as Arc<dyn TaskAccess>),
            ApiMetrics::unregistered(),
        );
        (runner.with_log_archive(self.archive.clone()), queue)
    }

    /// Records a deployment and queues it, as the API does.
    async fn deploy(&self, queue: &JobQueue, secrets: &[(&str, &str)]) -> DeploymentId {
        let id = DeploymentId::random();
        let build = BuildSettings {
            secrets: secrets
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..BuildSettings::default()
        };
        let place = queue.reserve().unwrap();
        self.bus.create(&id).await.unwrap();
        self.records
            .insert(Deployment {
                id: id.clone(),
                project: None,
                repo: "https://example.com/site.git".into(),
                git_ref: None,
                serving: ServingOptions::default(),
                build: build.without_secret_values(),
                status: DeploymentStatus::Queued,
                error: None,
                commit: None,
                created_unix_ms: 1,
                started_unix_ms: None,
                finished_unix_ms: None,
                runner: Some(queue.instance().to_owned()),
                cancel_requested: false,
                previous_commit: None,
                skip_reason: None,
                source: Default::default(),
                archive: None,
                trigger: Default::default(),
                pinned: false,
                repo_credentials_withheld: false,
            })
            .await
            .unwrap();
        place
            .submit(BuildJob {
                deployment: id.clone(),
                project: None,
                repo: "https://example.com/site.git".into(),
                git_ref: None,
                serving: ServingOptions::default(),
                build,
                limits: BuildLimits::default(),
                cache_key: None,
                previous_commit: None,
                base: None,
                archive: None,
            })
            .unwrap();
        id
    }

    /// The whole log of `id`, once its final record is written (the status may move first).
    async fn whole_log(&self, id: &DeploymentId) -> Vec<gitdeploy_core::LogRecord> {
        let mut follower = self.bus.follow(id, 0).await.unwrap();
        let mut log = Vec::new();
        let read = async {
            while let Some(record) = follower.next().await.unwrap() {
                log.push(record);
            }
        };
        tokio::time::timeout(Duration::from_secs(30), read)
            .await
            .expect("the log got its final record");
        log
    }

    /// Waits (bounded) until the deployment's status is `want`.
    async fn until(&self, id: &DeploymentId, want: DeploymentStatus) -> Deployment {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let d = self.records.get(id).await.unwrap().unwrap();
            if d.status == want {
                return d;
            }
            assert!(Instant::now() < deadline, "{id} stayed {:?}", d.status);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The task ECS runs for `id`, once there is one.
async fn task_of(
    client: &aws_sdk_ecs::Client,
    cluster: &str,
    id: &DeploymentId,
) -> aws_sdk_ecs::types::Task {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let arns = client
            .list_tasks()
            .cluster(cluster)
            .started_by(STARTED_BY)
            .send()
            .await
            .unwrap()
            .task_arns
            .unwrap_or_default();
        if !arns.is_empty() {
            let tasks = client
                .describe_tasks()
                .cluster(cluster)
                .set_tasks(Some(arns))
                .include(aws_sdk_ecs::types::TaskField::Tags)
                .send()
                .await
                .unwrap()
                .tasks
                .unwrap_or_default();
            if let Some(t) = tasks.into_iter().find(|t| {
                t.tags.iter().flatten().any(|tag| {
                    tag.key.as_deref() == Some(DEPLOYMENT_TAG)
                        && tag.value.as_deref() == Some(id.as_str())
                })
            }) {
                return t;
            }
        }
        assert!(Instant::now() < deadline, "no task for {id}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn env_of(task: &aws_sdk_ecs::types::Task) -> Vec<(String, String)> {
    task.overrides
        .as_ref()
        .and_then(|o| o.container_overrides.as_ref())
        .and_then(|c| c.first())
        .and_then(|c| c.environment.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|kv| (kv.name.unwrap_or_default(), kv.value.unwrap_or_default()))
        .collect()
}

async fn stop(
    client: &aws_sdk_ecs::Client,
    cluster: &str,
    task: &aws_sdk_ecs::types::Task,
    why: &str,
) {
    client
        .stop_task()
        .cluster(cluster)
        .task(task.task_arn.clone().unwrap())
        .reason(why)
        .send()
        .await
        .unwrap();
}

#[tokio::test]
async fn ecs_runner_runs_follows_cancels_reattaches_and_reports_errors() {
    let world = EcsWorld::start().await;
    let (redis, client, platform) = (&world.redis, &world.client, &world.platform);
    let (subnet, sg) = (world.subnet.as_str(), world.sg.as_str());
    let (runner, queue) = platform.runner(runner_config("builds", subnet, sg), client.clone());
    let (stop_runner, stopped) = tokio::sync::oneshot::channel::<()>();
    let first = tokio::spawn(runner.run(async {
        let _ = stopped.await;
    }));

    // A deployment becomes one task, with the job in its environment (secret values not),
    // tagged with the deployment and started by GitDeploy; the build is marked building.
    let a = platform.deploy(&queue, &[("TOKEN", "s3cr3t-value")]).await;
    let task = task_of(client, "builds", &a).await;
    assert_eq!(task.started_by.as_deref(), Some(STARTED_BY));
    let env = env_of(&task);
    let job: BuildJob = serde_json::from_str(
        &env.iter()
            .find(|(k, _)| k == "GITDEPLOY_JOB")
            .expect("the job")
            .1,
    )
    .unwrap();
    assert_eq!(job.deployment, a);
    assert_eq!(
        job.build.secrets["TOKEN"], "",
        "secret values stay out of the ECS API"
    );
    assert!(env.iter().all(|(_, v)| !v.contains("s3cr3t-value")));
    assert!(env.contains(&(DEPLOYMENT_ENV.into(), a.to_string())));
    assert!(env.contains(&("GITDEPLOY_S3_BUCKET".into(), "sites".into())));
    let task_a = TaskUser::of(&redis.url, &env).await;
    assert_eq!(task_a.user, format!("gitdeploy-build-{a}"));
    let side = task_a.side(&a).await;
    assert_eq!(
        side.take_withheld().await.unwrap().as_deref(),
        Some(r#"{"secrets":{"TOKEN":"s3cr3t-value"}}"#),
        "the task reads its secrets from Redis, once"
    );
    assert!(side.take_withheld().await.unwrap().is_none());
    platform.until(&a, DeploymentStatus::Building).await;

    // The task stops without having recorded an outcome: the build fails with ECS's reason.
    stop(
        client,
        "builds",
        &task,
        "Essential container in task exited",
    )
    .await;
    let failed = platform.until(&a, DeploymentStatus::Failed).await;
    let error = failed.error.unwrap();
    assert!(
        error.contains("Essential container in task exited"),
        "{error}"
    );
    // The complete log (ending with the failure) is archived when the task ends; the Redis
    // stream expires later.
    let deadline = Instant::now() + Duration::from_secs(10);
    let archived = loop {
        if let Some(ndjson) = platform.archive.0.lock().unwrap().get(&a).cloned() {
            break String::from_utf8(ndjson).unwrap();
        }
        assert!(Instant::now() < deadline, "the log was not archived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let log = platform.bus.read(&a, 0).await.unwrap();
    assert!(log.last().unwrap().is_final(), "the log ends: {log:?}");
    assert_eq!(archived.lines().count(), log.len());

    // A task whose job recorded its outcome stays as recorded.
    let b = platform.deploy(&queue, &[]).await;
    let task_b = task_of(client, "builds", &b).await;
    platform.until(&b, DeploymentStatus::Building).await;
    // The task reports its ending into its own report; the runner applies it (status, the
    // log's final record, the archive) and removes the task's access.
    let task_b = TaskUser::of(&redis.url, &env_of(&task_b)).await;
    let mut conn = task_b.connect().await.unwrap();
    let _: () = redis::cmd("HSET")
        .arg(format!("ecs:task:{b}"))
        .arg("ended")
        .arg(r#"{"outcome":{"status":"ready","files":3,"bytes":42},"commit":"abc123"}"#)
        .query_async(&mut conn)
        .await
        .unwrap();
    let ready = platform.until(&b, DeploymentStatus::Ready).await;
    assert_eq!(ready.commit.as_deref(), Some("abc123"));
    let log = platform.whole_log(&b).await;
    assert_eq!(log.last().unwrap().line, "Deployment is ready", "{log:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while task_b.connect().await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "the task's access outlived its build"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(platform.store.task_report(&b).await.unwrap().is_none());
    // Cancel is a StopTask.
    let c = platform.deploy(&queue, &[]).await;
    let task_c = task_of(client, "builds", &c).await;
    platform.until(&c, DeploymentStatus::Building).await;
    assert!(queue.cancel(&c));
    platform.until(&c, DeploymentStatus::Canceled).await;
    let described = client
        .describe_tasks()
        .cluster("builds")
        .tasks(task_c.task_arn.clone().unwrap())
        .send()
        .await
        .unwrap();
    let t = &described.tasks.unwrap()[0];
    assert_eq!(t.stopped_reason.as_deref(), Some("canceled by a user"));
    assert_eq!(
        platform.records.get(&b).await.unwrap().unwrap().status,
        DeploymentStatus::Ready
    );

    // A restarted runner finds its running task again and records how it ends.
    let d = platform.deploy(&queue, &[]).await;
    let task_d = task_of(client, "builds", &d).await;
    platform.until(&d, DeploymentStatus::Building).await;
    stop_runner.send(()).unwrap();
    first.await.unwrap();
    let (runner, second_queue) =
        platform.runner(runner_config("builds", subnet, sg), client.clone());
    let (_stop_second, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(runner.run(async {
        let _ = stopped.await;
    }));
    // Once the first runner's heartbeat has expired, the second holds the build it watches.
    let deadline = Instant::now() + Duration::from_secs(30);
    while platform
        .records
        .get(&d)
        .await
        .unwrap()
        .unwrap()
        .runner
        .as_deref()
        != Some(second_queue.instance())
    {
        assert!(
            Instant::now() < deadline,
            "the new runner never took the build over"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        platform.records.get(&d).await.unwrap().unwrap().status,
        DeploymentStatus::Building
    );
    stop(client, "builds", &task_d, "Task failed ELB health checks").await;
    let failed = platform.until(&d, DeploymentStatus::Failed).await;
    let error = failed.error.unwrap();
    assert!(error.contains("Task failed ELB health checks"), "{error}");

    // ECS refusing the request fails the build with ECS's own words.
    let (bad, bad_queue) =
        platform.runner(runner_config("no-such-cluster", subnet, sg), client.clone());
    let (_stop_bad, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(bad.run(async {
        let _ = stopped.await;
    }));
    let e = platform.deploy(&bad_queue, &[]).await;
    let failed = platform.until(&e, DeploymentStatus::Failed).await;
    let error = failed.error.unwrap();
    assert!(
        error.starts_with("ECS could not start the build task: ClusterNotFoundException"),
        "{error}"
    );
}

/// The Redis user a task was started with (from its environment), as the task connects.
struct TaskUser {
    url: String,
    user: String,
    password: String,
}

impl TaskUser {
    async fn of(url: &str, env: &[(String, String)]) -> TaskUser {
        let get = |name: &str| {
            env.iter()
                .find(|(k, _)| k == name)
                .unwrap_or_else(|| panic!("the task has no {name}"))
                .1
                .clone()
        };
        TaskUser {
            url: url.into(),
            user: get(gitdeploy_api::task_access::REDIS_USER_ENV),
            password: get(gitdeploy_api::task_access::REDIS_PASSWORD_ENV),
        }
    }

    async fn connect(&self) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        use redis::IntoConnectionInfo;
        let info = self.url.as_str().into_connection_info()?;
        let settings = info
            .redis_settings()
            .clone()
            .set_username(&self.user)
            .set_password(&self.password);
        redis::Client::open(info.set_redis_settings(settings))?
            .get_multiplexed_async_connection()
            .await
    }

    async fn side(&self, id: &DeploymentId) -> gitdeploy_api::TaskSide {
        gitdeploy_api::TaskSide::connect(
            &self.url,
            Some((&self.user, &self.password)),
            "ecs:",
            id.clone(),
        )
        .await
        .unwrap()
    }
}

/// What every ECS test runs against: moto's ECS with the cluster `builds` and the builder's task
/// definition, its default network, a Redis of its own and the platform's store and bus on it.
struct EcsWorld {
    _moto: Process,
    endpoint: String,
    redis: common::Redis,
    subnet: String,
    sg: String,
    client: aws_sdk_ecs::Client,
    platform: Platform,
}

impl EcsWorld {
    async fn start() -> EcsWorld {
        let (moto, endpoint) = moto();
        let redis = common::Redis::start();
        let (subnet, sg) = default_network(&endpoint);
        let client = ecs_client(&endpoint);
        ecs_platform(&client).await;
        let platform = Platform::connect(&redis.url).await;
        EcsWorld {
            _moto: moto,
            endpoint,
            redis,
            subnet,
            sg,
            client,
            platform,
        }
    }
}

/// The cluster `builds` and the builder's task definition.
async fn ecs_platform(client: &aws_sdk_ecs::Client) {
    client
        .create_cluster()
        .cluster_name("builds")
        .send()
        .await
        .unwrap();
    client
        .register_task_definition()
        .family("gitdeploy-builder")
        .requires_compatibilities(Compatibility::Fargate)
        .network_mode(NetworkMode::Awsvpc)
        .cpu("1024")
        .memory("2048")
        .container_definitions(
            ContainerDefinition::builder()
                .name("builder")
                .image("gitdeploy/builder")
                .memory(2048)
                .build(),
        )
        .send()
        .await
        .unwrap();
}

/// What a task holds opens its own build and nothing else (#13): its Redis user may write its
/// log, heartbeat and report and read its own record, and is refused every other key, every
/// channel, key listing and admin command; its storage session (from the upload role, through
/// Redis) is limited by a session policy to its own objects, and nothing of it is in the ECS
/// API.
#[tokio::test]
async fn each_build_task_holds_access_to_its_own_build_only() {
    let world = EcsWorld::start().await;
    let (redis, client, platform) = (&world.redis, &world.client, &world.platform);
    let (subnet, sg) = (world.subnet.as_str(), world.sg.as_str());
    let mut config = runner_config("builds", subnet, sg);
    config.upload_role_arn = Some("arn:aws:iam::123456789012:role/gitdeploy-upload".into());
    let sts = aws_sdk_sts::Client::from_conf(
        aws_sdk_sts::Config::builder()
            .behavior_version(aws_sdk_sts::config::BehaviorVersion::latest())
            .region(aws_sdk_sts::config::Region::new("us-east-1"))
            .endpoint_url(&world.endpoint)
            .credentials_provider(aws_sdk_sts::config::Credentials::new(
                "test", "test", None, None, "test",
            ))
            .build(),
    );
    let (runner, queue) = platform.runner(config, client.clone());
    let runner = runner.with_upload_role(gitdeploy_api::ecs::UploadRole {
        sts,
        role_arn: "arn:aws:iam::123456789012:role/gitdeploy-upload".into(),
        bucket: "sites".into(),
        layout: gitdeploy_core::ObjectLayout::new(""),
    });
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(runner.run(async {
        let _ = stopped.await;
    }));
    let a = platform.deploy(&queue, &[]).await;
    let other = platform.deploy(&queue, &[]).await;
    let env = env_of(&task_of(client, "builds", &a).await);
    platform.until(&a, DeploymentStatus::Building).await;

    // The storage session travels through Redis, never in the ECS API.
    let task = TaskUser::of(&redis.url, &env).await;
    let withheld: gitdeploy_core::job::WithheldFromTask = serde_json::from_str(
        &task
            .side(&a)
            .await
            .take_withheld()
            .await
            .unwrap()
            .expect("the storage session"),
    )
    .unwrap();
    let session = withheld.storage.expect("a session of the upload role");
    assert!(!session.session_token.is_empty());
    for (k, v) in &env {
        assert!(
            !v.contains(&session.secret_access_key) && !k.starts_with("AWS_"),
            "{k} in the ECS API"
        );
    }

    let mut conn = task.connect().await.unwrap();
    let allowed: &[&[&str]] = &[
        &["XADD", &format!("ecs:log:{a}"), "*", "r", "{}"],
        &["SET", &format!("ecs:runner:task-{a}"), "1", "PX", "1000"],
        &["HSET", &format!("ecs:task:{a}"), "claimed", "me"],
        &["HGET", &format!("ecs:d:{a}"), "j"],
        &["PING"],
    ];
    for command in allowed {
        let mut cmd = redis::cmd(command[0]);
        cmd.arg(&command[1..]);
        let answer: redis::RedisResult<redis::Value> = cmd.query_async(&mut conn).await;
        assert!(answer.is_ok(), "{command:?}: {answer:?}");
    }
    let refused: &[&[&str]] = &[
        // Its own record is read-only: the project (and so the alias it moves) is the edge's.
        &["HSET", &format!("ecs:d:{a}"), "j", "{}"],
        &["DEL", &format!("ecs:d:{a}")],
        &["HGET", &format!("ecs:d:{other}"), "j"],
        &["XADD", &format!("ecs:log:{other}"), "1-0", "r", "{}"],
        &["GETDEL", &format!("ecs:job-secrets:{other}")],
        &["HSET", &format!("ecs:task:{other}"), "ended", "{}"],
        &["HSET", "ecs:p:site", "a", &a.to_string()],
        &["SADD", "ecs:active", "x"],
        &["ZRANGE", "ecs:deployments", "0", "-1"],
        &["SET", "ecs:runner:some-edge", "1"],
        &["PUBLISH", "ecs:aliases", "site"],
        &["KEYS", "*"],
        &["SCAN", "0"],
        &[
            "EVAL",
            "return redis.call('HSET', KEYS[1], 'j', '{}')",
            "1",
            "ecs:p:site",
        ],
        &["ACL", "SETUSER", "evil", "on", "+@all", "~*"],
        &["CONFIG", "GET", "*"],
        &["FLUSHALL"],
    ];
    for command in refused {
        let mut cmd = redis::cmd(command[0]);
        cmd.arg(&command[1..]);
        let answer: redis::RedisResult<redis::Value> = cmd.query_async(&mut conn).await;
        let e = answer.expect_err(&format!("{command:?} was allowed"));
        assert!(
            e.to_string().contains("NOPERM") || e.to_string().contains("permission"),
            "{command:?}: {e}"
        );
    }

    // After a Redis restart the users are gone; the runner creates the task's user again.
    let mut admin = redis::Client::open(redis.url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("ACL")
        .arg("DELUSER")
        .arg(&task.user)
        .query_async(&mut admin)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while task.connect().await.is_err() {
        assert!(Instant::now() < deadline, "the task's user was not renewed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// While every build slot is busy and more builds wait, the ECS runner keeps sending its
/// heartbeat (before, it waited for a slot inside its loop, and other edges could have
/// declared its builds lost).
#[tokio::test]
async fn the_ecs_runner_keeps_its_heartbeat_while_every_slot_is_busy() {
    let world = EcsWorld::start().await;
    let (redis, client, platform) = (&world.redis, &world.client, &world.platform);
    let (subnet, sg) = (world.subnet.as_str(), world.sg.as_str());
    let mut config = runner_config("builds", subnet, sg);
    config.concurrency = 1;
    let (runner, queue) = platform.runner(config, client.clone());
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(runner.run(async {
        let _ = stopped.await;
    }));
    let first = platform.deploy(&queue, &[]).await;
    platform.until(&first, DeploymentStatus::Building).await;
    let waiting = platform.deploy(&queue, &[]).await;
    let mut admin = redis::Client::open(redis.url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let key = format!("ecs:runner:{}", queue.instance());
    let beat = |admin: &mut redis::aio::MultiplexedConnection| {
        let mut admin = admin.clone();
        let key = key.clone();
        async move {
            redis::cmd("GET")
                .arg(&key)
                .query_async::<Option<u64>>(&mut admin)
                .await
                .unwrap()
        }
    };
    // The slot is taken and a build waits: five more heartbeats must still come.
    let mut last = beat(&mut admin).await;
    for _ in 0..5 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let now = beat(&mut admin).await;
            if now.is_some() && now != last {
                last = now;
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no heartbeat while every slot is busy"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert_eq!(
        platform
            .records
            .get(&waiting)
            .await
            .unwrap()
            .unwrap()
            .status,
        DeploymentStatus::Queued
    );
}
