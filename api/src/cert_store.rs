//! Where custom domains' certificates live, with what ordering them needs (#15): the ACME
//! account, the HTTP-01 challenge answers and a lease so that one edge orders a name at a time.
//! Every edge reads certificates from here, so a certificate ordered once serves everywhere.
//!
//! Two backends, as for the rest of the state: files in the data directory for `up` (one
//! process: challenges and leases are kept in memory) and Redis for `serve` (challenges expire
//! by themselves; a lease is a `SET NX PX` released only by its holder). Private keys are
//! written with mode 0600 on disk and never printed: [`StoredCertificate`]'s `Debug` leaves the
//! key out. Build tasks' Redis users cannot read any of these keys (their ACL names only their
//! own build's keys).

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::redis_conn::io_err;

/// One domain's certificate: the chain and its key, PEM.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredCertificate {
    /// The name it is for (normalized).
    pub domain: String,
    /// The certificate chain, leaf first (PEM).
    pub chain_pem: String,
    /// Its private key (PKCS#8 PEM).
    pub key_pem: String,
    /// When the leaf expires (Unix ms).
    pub not_after_unix_ms: u64,
    /// When it was issued to us (Unix ms).
    pub issued_unix_ms: u64,
}

impl std::fmt::Debug for StoredCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredCertificate")
            .field("domain", &self.domain)
            .field("not_after_unix_ms", &self.not_after_unix_ms)
            .finish_non_exhaustive()
    }
}

/// The DER blocks of `pem` labelled `label` (`CERTIFICATE`, `PRIVATE KEY`), in order.
pub fn pem_blocks(pem: &[u8], label: &str) -> Result<Vec<Vec<u8>>, String> {
    let mut out = Vec::new();
    for block in x509_parser::pem::Pem::iter_from_buffer(pem) {
        let block = block.map_err(|e| format!("malformed PEM: {e}"))?;
        if block.label == label {
            out.push(block.contents);
        }
    }
    Ok(out)
}

/// When the first certificate of the PEM chain `pem` expires (Unix ms).
pub fn not_after_unix_ms(pem: &[u8]) -> Result<u64, String> {
    let blocks = pem_blocks(pem, "CERTIFICATE")?;
    let leaf = blocks.first().ok_or("no certificate in the PEM")?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| format!("malformed certificate: {e}"))?;
    let secs = cert.validity().not_after.timestamp();
    Ok(u64::try_from(secs).unwrap_or(0).saturating_mul(1000))
}

/// What ordering and serving certificates keeps in the shared state.
#[async_trait::async_trait]
pub trait CertStore: Send + Sync + 'static {
    /// The certificate of `domain`, if one was stored.
    async fn certificate(&self, domain: &str) -> io::Result<Option<StoredCertificate>>;
    /// Stores `cert`, replacing the domain's previous one.
    async fn put_certificate(&self, cert: &StoredCertificate) -> io::Result<()>;
    /// Forgets `domain`'s certificate (the domain was removed).
    async fn delete_certificate(&self, domain: &str) -> io::Result<()>;
    /// The answer to the HTTP-01 challenge `token`, while an order waits for it.
    async fn challenge(&self, token: &str) -> io::Result<Option<String>>;
    /// Publishes the answer to challenge `token` for `ttl`.
    async fn put_challenge(&self, token: &str, answer: &str, ttl: Duration) -> io::Result<()>;
    /// Withdraws challenge `token`.
    async fn delete_challenge(&self, token: &str) -> io::Result<()>;
    /// Takes lease `name` for `holder` for `ttl`; `false` when someone else holds it.
    async fn lease(&self, name: &str, holder: &str, ttl: Duration) -> io::Result<bool>;
    /// Gives lease `name` back, if `holder` still holds it.
    async fn release(&self, name: &str, holder: &str) -> io::Result<()>;
    /// The ACME account kept for `directory` (its credentials, JSON).
    async fn account(&self, directory: &str) -> io::Result<Option<String>>;
    /// Keeps the ACME account `credentials` (JSON) for `directory`.
    async fn put_account(&self, directory: &str, credentials: &str) -> io::Result<()>;
}

/// A file name for `directory`: its SHA-256, so any URL is a safe name.
fn directory_key(directory: &str) -> String {
    hex::encode(Sha256::digest(directory.as_bytes()))
}

/// A well-formed ACME token (base64url, RFC 8555 §8.3: at least 128 bits): anything else is
/// never looked up.
pub fn is_token(token: &str) -> bool {
    (16..=256).contains(&token.len())
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Certificates and accounts as files under one directory (`<data>/state/tls`); challenges and
/// leases in memory (one process uses a data directory).
pub struct FileCertStore {
    dir: PathBuf,
    challenges: Mutex<HashMap<String, (String, Instant)>>,
    leases: Mutex<HashMap<String, (String, Instant)>>,
}

impl FileCertStore {
    /// The store in `dir`, made (mode 0700) when missing.
    pub fn open(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir.join("certs"))?;
        std::fs::create_dir_all(dir.join("accounts"))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        Ok(FileCertStore {
            dir: dir.to_owned(),
            challenges: Mutex::new(HashMap::new()),
            leases: Mutex::new(HashMap::new()),
        })
    }

    /// Writes `path` with mode 0600 through a temporary file and a rename.
    fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(tmp, path)
    }

    fn read(path: &Path) -> io::Result<Option<Vec<u8>>> {
        match std::fs::read(path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn cert_path(&self, domain: &str) -> io::Result<PathBuf> {
        // Domains are normalized names; anything else must not become a path.
        if domain.is_empty()
            || domain.starts_with('.')
            || !domain
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("not a domain name: {domain:?}"),
            ));
        }
        Ok(self.dir.join("certs").join(format!("{domain}.json")))
    }
}

#[async_trait::async_trait]
impl CertStore for FileCertStore {
    async fn certificate(&self, domain: &str) -> io::Result<Option<StoredCertificate>> {
        match Self::read(&self.cert_path(domain)?)? {
            Some(b) => Ok(Some(serde_json::from_slice(&b)?)),
            None => Ok(None),
        }
    }

    async fn put_certificate(&self, cert: &StoredCertificate) -> io::Result<()> {
        Self::write_private(
            &self.cert_path(&cert.domain)?,
            &serde_json::to_vec_pretty(cert)?,
        )
    }

    async fn delete_certificate(&self, domain: &str) -> io::Result<()> {
        match std::fs::remove_file(self.cert_path(domain)?) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    async fn challenge(&self, token: &str) -> io::Result<Option<String>> {
        let now = Instant::now();
        let mut map = self.challenges.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, (_, until)| *until > now);
        Ok(map.get(token).map(|(a, _)| a.clone()))
    }

    async fn put_challenge(&self, token: &str, answer: &str, ttl: Duration) -> io::Result<()> {
        let mut map = self.challenges.lock().unwrap_or_else(|p| p.into_inner());
        map.insert(token.to_owned(), (answer.to_owned(), Instant::now() + ttl));
        Ok(())
    }

    async fn delete_challenge(&self, token: &str) -> io::Result<()> {
        let mut map = self.challenges.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(token);
        Ok(())
    }

    async fn lease(&self, name: &str, holder: &str, ttl: Duration) -> io::Result<bool> {
        let now = Instant::now();
        let mut map = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(name) {
            Some((h, until)) if *until > now && h != holder => Ok(false),
            _ => {
                map.insert(name.to_owned(), (holder.to_owned(), now + ttl));
                Ok(true)
            }
        }
    }

    async fn release(&self, name: &str, holder: &str) -> io::Result<()> {
        let mut map = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        if map.get(name).is_some_and(|(h, _)| h == holder) {
            map.remove(name);
        }
        Ok(())
    }

    async fn account(&self, directory: &str) -> io::Result<Option<String>> {
        let path = self
            .dir
            .join("accounts")
            .join(format!("{}.json", directory_key(directory)));
        Ok(Self::read(&path)?.map(|b| String::from_utf8_lossy(&b).into_owned()))
    }

    async fn put_account(&self, directory: &str, credentials: &str) -> io::Result<()> {
        let path = self
            .dir
            .join("accounts")
            .join(format!("{}.json", directory_key(directory)));
        Self::write_private(&path, credentials.as_bytes())
    }
}

/// Gives a lease back only if the caller still holds it.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Certificates, accounts, challenges and leases in Redis, shared by every edge:
/// `<prefix>cert:<domain>`, `<prefix>acme-account:<sha256>`, `<prefix>acme-challenge:<token>`
/// (expiring), `<prefix>lease:<name>` (expiring).
pub struct RedisCertStore {
    conn: ConnectionManager,
    prefix: String,
}

impl RedisCertStore {
    /// The store on `conn`, keys under `prefix`.
    pub fn new(conn: ConnectionManager, prefix: &str) -> Self {
        RedisCertStore {
            conn,
            prefix: prefix.to_owned(),
        }
    }

    fn key(&self, kind: &str, name: &str) -> String {
        format!("{}{kind}:{name}", self.prefix)
    }

    async fn get(&self, key: String) -> io::Result<Option<String>> {
        redis::cmd("GET")
            .arg(key)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(io_err)
    }

    async fn set(&self, key: String, value: &str, ttl: Option<Duration>) -> io::Result<()> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg(value);
        if let Some(ttl) = ttl {
            cmd.arg("PX").arg(ttl.as_millis().max(1) as u64);
        }
        cmd.query_async::<()>(&mut self.conn.clone())
            .await
            .map_err(io_err)
    }

    async fn del(&self, key: String) -> io::Result<()> {
        redis::cmd("DEL")
            .arg(key)
            .query_async::<()>(&mut self.conn.clone())
            .await
            .map_err(io_err)
    }
}

#[async_trait::async_trait]
impl CertStore for RedisCertStore {
    async fn certificate(&self, domain: &str) -> io::Result<Option<StoredCertificate>> {
        match self.get(self.key("cert", domain)).await? {
            Some(j) => Ok(Some(serde_json::from_str(&j)?)),
            None => Ok(None),
        }
    }

    async fn put_certificate(&self, cert: &StoredCertificate) -> io::Result<()> {
        let json = serde_json::to_string(cert)?;
        self.set(self.key("cert", &cert.domain), &json, None).await
    }

    async fn delete_certificate(&self, domain: &str) -> io::Result<()> {
        self.del(self.key("cert", domain)).await
    }

    async fn challenge(&self, token: &str) -> io::Result<Option<String>> {
        self.get(self.key("acme-challenge", token)).await
    }

    async fn put_challenge(&self, token: &str, answer: &str, ttl: Duration) -> io::Result<()> {
        self.set(self.key("acme-challenge", token), answer, Some(ttl))
            .await
    }

    async fn delete_challenge(&self, token: &str) -> io::Result<()> {
        self.del(self.key("acme-challenge", token)).await
    }

    async fn lease(&self, name: &str, holder: &str, ttl: Duration) -> io::Result<bool> {
        let key = self.key("lease", name);
        let set: Option<String> = redis::cmd("SET")
            .arg(&key)
            .arg(holder)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(io_err)?;
        if set.is_some() {
            return Ok(true);
        }
        // Ours already (an earlier round of this holder that did not give it back).
        Ok(self.get(key).await?.as_deref() == Some(holder))
    }

    async fn release(&self, name: &str, holder: &str) -> io::Result<()> {
        redis::Script::new(RELEASE)
            .key(self.key("lease", name))
            .arg(holder)
            .invoke_async::<i64>(&mut self.conn.clone())
            .await
            .map(|_| ())
            .map_err(io_err)
    }

    async fn account(&self, directory: &str) -> io::Result<Option<String>> {
        self.get(self.key("acme-account", &directory_key(directory)))
            .await
    }

    async fn put_account(&self, directory: &str, credentials: &str) -> io::Result<()> {
        self.set(
            self.key("acme-account", &directory_key(directory)),
            credentials,
            None,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_table() {
        assert!(is_token("LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0"));
        assert!(is_token("abcdefghijklmnop"));
        for bad in [
            "",
            "short",
            "../../etc/passwd-aaaaaaaa",
            "abc def ghijklmnopq",
            "abcdefghijklmnop=",
            &"a".repeat(257),
        ] {
            assert!(!is_token(bad), "{bad}");
        }
    }

    #[tokio::test]
    async fn file_store_keeps_keys_private_and_leases_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileCertStore::open(&dir.path().join("tls")).unwrap();
        let cert = StoredCertificate {
            domain: "www.shop.org".into(),
            chain_pem: "chain".into(),
            key_pem: "secret-key".into(),
            not_after_unix_ms: 5,
            issued_unix_ms: 1,
        };
        store.put_certificate(&cert).await.unwrap();
        assert_eq!(
            store.certificate("www.shop.org").await.unwrap(),
            Some(cert.clone())
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("tls/certs/www.shop.org.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!format!("{cert:?}").contains("secret-key"));
        assert!(store.certificate("../evil").await.is_err());
        store.delete_certificate("www.shop.org").await.unwrap();
        assert_eq!(store.certificate("www.shop.org").await.unwrap(), None);

        let ttl = Duration::from_secs(60);
        assert!(store.lease("acme:a.org", "edge-1", ttl).await.unwrap());
        assert!(!store.lease("acme:a.org", "edge-2", ttl).await.unwrap());
        assert!(store.lease("acme:a.org", "edge-1", ttl).await.unwrap());
        store.release("acme:a.org", "edge-2").await.unwrap();
        assert!(!store.lease("acme:a.org", "edge-2", ttl).await.unwrap());
        store.release("acme:a.org", "edge-1").await.unwrap();
        assert!(store.lease("acme:a.org", "edge-2", ttl).await.unwrap());
        assert!(store
            .lease("acme:b.org", "edge-1", Duration::ZERO)
            .await
            .unwrap());
        assert!(store.lease("acme:b.org", "edge-2", ttl).await.unwrap());
    }

    #[test]
    fn not_after_is_read_from_the_leaf() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["a.org".to_owned()]).unwrap();
        params.not_after = rcgen::date_time_ymd(2031, 1, 2);
        let pem = params.self_signed(&key).unwrap().pem();
        assert_eq!(
            not_after_unix_ms(pem.as_bytes()).unwrap(),
            1_925_078_400_000
        );
        assert!(not_after_unix_ms(b"no pem here").is_err());
    }
}
