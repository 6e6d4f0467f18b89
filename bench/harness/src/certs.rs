//! A certificate authority of the test's own, made with `openssl`: a CA certificate, and server
//! certificates it signs for the names (and addresses) a test serves.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A CA in a temporary directory; its files go with it.
pub struct TestCa {
    dir: tempfile::TempDir,
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

impl TestCa {
    /// A new CA (P-256, valid two days).
    pub fn new() -> TestCa {
        let ca = TestCa {
            dir: tempfile::tempdir().expect("a temporary directory"),
        };
        ca.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=GitDeploy test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
        ]);
        ca
    }

    /// The CA certificate (PEM), for clients to trust.
    pub fn ca_pem(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Signs a server certificate for `names` (`DNS:…` or `IP:…` subject alternative names) with
    /// serial `serial` (`0x1001`) and writes it to `<name>.pem` and `<name>.key` in the CA's
    /// directory, replacing them whole (key first, as a certificate manager would).
    pub fn issue(&self, name: &str, names: &[&str], serial: &str) -> (PathBuf, PathBuf) {
        std::fs::write(
            self.dir.path().join("ext.cnf"),
            format!(
                "subjectAltName={}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
                names.join(",")
            ),
        )
        .expect("the extension file");
        self.openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "new.key",
            "-out",
            "new.csr",
            "-subj",
            "/CN=gitdeploy test",
        ]);
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            "new.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-set_serial",
            serial,
            "-out",
            "new.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ]);
        let (cert, key) = (
            self.dir.path().join(format!("{name}.pem")),
            self.dir.path().join(format!("{name}.key")),
        );
        std::fs::rename(self.dir.path().join("new.key"), &key).expect("the key in place");
        std::fs::rename(self.dir.path().join("new.pem"), &cert).expect("the certificate in place");
        (cert, key)
    }

    /// The CA's directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("openssl (scripts/prereqs --test installs it)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
