//! moto servers for the AWS path: started on 127.0.0.1 port 0 from the
//! pinned venv (`make moto-venv`), one process per region when a test takes
//! a region down. Each child lives only while our stdin pipe to it is open,
//! so it dies with the test process, even on a crash.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Once;

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
};
use rkms::config::{KmsProvider, Settings, StoreBackend};

pub const REGIONS: [&str; 3] = ["us-east-1", "us-west-2", "eu-west-1"];
pub const TABLE: &str = "rkms_keys";

/// Static test credentials; no test reaches anything but loopback.
pub fn aws_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_SESSION_TOKEN", "testing"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_CONFIG_FILE", "/dev/null"),
        ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null"),
    ]
}

pub fn init_env() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for (k, v) in aws_env() {
            std::env::set_var(k, v);
        }
    });
}

pub struct Moto {
    child: Child,
    _stdin: ChildStdin,
    pub endpoint: String,
}

fn python() -> PathBuf {
    std::env::var_os("RKMS_MOTO_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv-moto/bin/python"))
}

impl Moto {
    pub fn start() -> Self {
        init_env();
        let python = python();
        assert!(
            python.exists(),
            "{} is missing: run `make moto-venv` (make test does)",
            python.display()
        );
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/moto/moto_server.py");
        let mut child = Command::new(python)
            .arg(script)
            .envs(aws_env())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto");
        let stdin = child.stdin.take().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port: u16 = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("moto printed {line:?}"));
        Self {
            child,
            _stdin: stdin,
            endpoint: format!("http://127.0.0.1:{port}"),
        }
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    }

    /// SIGSTOP: the region accepts connections but never answers.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    /// The region is gone (and its state with it).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.thaw_quietly();
        self.kill();
    }
}

impl Moto {
    fn thaw_quietly(&self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status();
    }
}

/// KMS in three regions plus a DynamoDB table.
pub struct Cloud {
    /// Region -> its moto (shared when `per_region` is false).
    pub kms: BTreeMap<String, std::rc::Rc<Moto>>,
    pub dynamo: std::rc::Rc<Moto>,
    pub key_arns: HashMap<String, String>,
}

pub async fn sdk_config(region: &str) -> aws_config::SdkConfig {
    init_env();
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(region.to_owned()))
        .load()
        .await
}

pub async fn kms_client(endpoint: &str, region: &str) -> aws_sdk_kms::Client {
    let conf = aws_sdk_kms::config::Builder::from(&sdk_config(region).await)
        .endpoint_url(endpoint)
        .build();
    aws_sdk_kms::Client::from_conf(conf)
}

pub async fn dynamo_client(endpoint: &str) -> aws_sdk_dynamodb::Client {
    let conf = aws_sdk_dynamodb::config::Builder::from(&sdk_config("us-east-1").await)
        .endpoint_url(endpoint)
        .build();
    aws_sdk_dynamodb::Client::from_conf(conf)
}

/// The table rkms expects: hash key `id` of type S, on demand.
pub async fn create_table(endpoint: &str, name: &str) {
    create_table_keyed(endpoint, name, "id").await;
}

/// A table with the hash key `key` of type S, on demand.
pub async fn create_table_keyed(endpoint: &str, name: &str, key: &str) {
    dynamo_client(endpoint)
        .await
        .create_table()
        .table_name(name)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name(key)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name(key)
                .key_type(KeyType::Hash)
                .build()
                .unwrap(),
        )
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await
        .unwrap();
}

impl Cloud {
    /// `per_region`: one moto per region (so one can be killed or frozen)
    /// and a separate one for DynamoDB. Otherwise one moto serves all.
    pub async fn start(per_region: bool) -> Self {
        let shared = std::rc::Rc::new(Moto::start());
        let dynamo = if per_region {
            std::rc::Rc::new(Moto::start())
        } else {
            shared.clone()
        };
        let mut kms = BTreeMap::new();
        for (i, region) in REGIONS.iter().enumerate() {
            let moto = if per_region && i > 0 {
                std::rc::Rc::new(Moto::start())
            } else {
                shared.clone()
            };
            kms.insert(region.to_string(), moto);
        }
        let mut key_arns = HashMap::new();
        for (region, moto) in &kms {
            let client = kms_client(&moto.endpoint, region).await;
            let key = client
                .create_key()
                .description("rkms test")
                .send()
                .await
                .unwrap();
            let meta = key.key_metadata.unwrap();
            client
                .create_alias()
                .alias_name(format!("alias/rkms-{region}"))
                .target_key_id(meta.key_id)
                .send()
                .await
                .unwrap();
            key_arns.insert(region.clone(), meta.arn.unwrap());
        }
        create_table(&dynamo.endpoint, TABLE).await;
        Self {
            kms,
            dynamo,
            key_arns,
        }
    }

    /// Point `region`'s alias at `key` (its id or ARN).
    pub async fn point_alias(&self, region: &str, key: &str) {
        kms_client(self.endpoint(region), region)
            .await
            .update_alias()
            .alias_name(format!("alias/rkms-{region}"))
            .target_key_id(key)
            .send()
            .await
            .unwrap();
    }

    /// Move `region`'s alias to a new key; that key's ARN.
    pub async fn move_alias(&self, region: &str) -> String {
        let kms = kms_client(self.endpoint(region), region).await;
        let other = kms.create_key().send().await.unwrap().key_metadata.unwrap();
        let arn = other.arn.unwrap();
        self.point_alias(region, &arn).await;
        arn
    }

    pub fn moto(&self, region: &str) -> &Moto {
        &self.kms[region]
    }

    pub fn endpoint(&self, region: &str) -> &str {
        &self.kms[region].endpoint
    }

    /// Settings for an rkms against this cloud.
    pub fn settings(&self) -> Settings {
        let mut s = Settings::default();
        s.server.listen = ([127, 0, 0, 1], 0).into();
        s.kms.provider = KmsProvider::Aws;
        s.kms.regions = REGIONS.iter().map(|r| r.to_string()).collect();
        s.kms.call_timeout_ms = 1500;
        s.kms.hedge_after_ms = 200;
        for region in REGIONS {
            s.kms
                .aws
                .key_ids
                .insert(region.into(), format!("alias/rkms-{region}"));
            s.kms
                .aws
                .endpoints
                .insert(region.into(), self.endpoint(region).to_owned());
        }
        s.store.backend = StoreBackend::Dynamodb;
        s.store.dynamodb.endpoint = self.dynamo.endpoint.clone();
        s.store.dynamodb.table = TABLE.into();
        s.store.call_timeout_ms = 1500;
        s.validate().unwrap();
        s
    }

    /// The same settings as `RKMS__…` variables, for the binary.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = aws_env()
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        let s = self.settings();
        env.push(("RKMS__KMS__PROVIDER".into(), "aws".into()));
        env.push((
            "RKMS__KMS__REGIONS".into(),
            format!(
                "[{}]",
                REGIONS
                    .iter()
                    .map(|r| format!("\"{r}\""))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        ));
        env.push((
            "RKMS__KMS__CALL_TIMEOUT_MS".into(),
            s.kms.call_timeout_ms.to_string(),
        ));
        env.push((
            "RKMS__KMS__HEDGE_AFTER_MS".into(),
            s.kms.hedge_after_ms.to_string(),
        ));
        env.push((
            "RKMS__KMS__AWS__KEY_IDS".into(),
            format!(
                "{{{}}}",
                REGIONS
                    .iter()
                    .map(|r| format!("\"{r}\":\"alias/rkms-{r}\""))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        ));
        env.push((
            "RKMS__KMS__AWS__ENDPOINTS".into(),
            format!(
                "{{{}}}",
                REGIONS
                    .iter()
                    .map(|r| format!("\"{r}\"=\"{}\"", self.endpoint(r)))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        ));
        env.push(("RKMS__STORE__BACKEND".into(), "dynamodb".into()));
        env.push((
            "RKMS__STORE__DYNAMODB__ENDPOINT".into(),
            self.dynamo.endpoint.clone(),
        ));
        env
    }
}
