//! Authentication material: the cluster CA and serving certificate, bearer tokens, the admin
//! kubeconfig and the node join token, all kept in the data dir.
//!
//! Files (created on first start, reused afterwards):
//! - `tls/ca.crt`, `tls/ca.key`: the cluster CA. The serving certificate is re-issued from it at
//!   every start so its SANs follow the bind address and host name.
//! - `tokens`: the static token file, one `token,user,group[,group...]` line per credential
//!   (same idea as kube-apiserver's `--token-auth-file`).
//! - `kubeconfig`: admin credentials (user `admin`, group `system:masters`) for kubectl.
//! - `token`: the node join token that `rudder agent --token-file` reads: the SHA-256 of the CA
//!   (served to anyone at `/cacerts`) and the bearer token of group `system:nodes`.
//!
//! Tokens are compared in constant time and never logged.

use std::{
    collections::HashMap,
    net::IpAddr,
    path::{Path, PathBuf},
};

use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// Errors preparing credentials.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file in the data dir could not be read or written.
    #[error("{path}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Certificate generation failed.
    #[error("generating certificates")]
    Cert(#[from] rcgen::Error),
    /// The token file is malformed.
    #[error("token file {path} line {line}: expected token,user[,group...]")]
    TokenFile {
        /// The file.
        path: String,
        /// The 1-based line.
        line: usize,
    },
}

type Result<T, E = Error> = std::result::Result<T, E>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Who made a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    /// User name, e.g. `admin` or `system:node:n1`.
    pub name: String,
    /// Groups, e.g. `system:masters`.
    pub groups: Vec<String>,
}

/// PEM material for the HTTPS listener.
pub struct Tls {
    /// The CA certificate (PEM), also embedded in kubeconfigs.
    pub ca_pem: String,
    /// The serving certificate chain (PEM).
    pub cert_pem: String,
    /// The serving key (PEM).
    pub key_pem: String,
}

/// Everything authentication needs, loaded from (or created in) the data dir.
pub struct Credentials {
    /// TLS material.
    pub tls: Tls,
    /// Token → user.
    tokens: HashMap<String, User>,
    /// The admin token (written into the kubeconfig).
    pub admin_token: String,
    /// The node join token.
    pub node_token: String,
}

impl Credentials {
    /// Loads credentials from `dir`, creating whatever is missing. `sans` are extra names and
    /// addresses for the serving certificate.
    pub fn load_or_create(dir: &Path, sans: &[String]) -> Result<Self> {
        let tls_dir = dir.join("tls");
        std::fs::create_dir_all(&tls_dir).map_err(io(&tls_dir))?;
        let tls = load_or_create_tls(&tls_dir, sans)?;
        let token_path = dir.join("tokens");
        if !token_path.exists() {
            let content = format!(
                "{},admin,system:masters\n{},system:node-bootstrap,system:nodes\n",
                random_token(),
                random_token()
            );
            write_private(&token_path, content.as_bytes())?;
        }
        let text = std::fs::read_to_string(&token_path).map_err(io(&token_path))?;
        let mut tokens = HashMap::new();
        let mut admin_token = None;
        let mut node_token = None;
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.split(',');
            let (Some(token), Some(user)) = (fields.next(), fields.next()) else {
                return Err(Error::TokenFile {
                    path: token_path.display().to_string(),
                    line: i + 1,
                });
            };
            let groups: Vec<String> = fields.map(str::to_owned).collect();
            if groups.iter().any(|g| g == "system:masters") && admin_token.is_none() {
                admin_token = Some(token.to_owned());
            }
            if groups.iter().any(|g| g == "system:nodes") && node_token.is_none() {
                node_token = Some(token.to_owned());
            }
            tokens.insert(
                token.to_owned(),
                User {
                    name: user.to_owned(),
                    groups,
                },
            );
        }
        let bad = || Error::TokenFile {
            path: token_path.display().to_string(),
            line: 0,
        };
        Ok(Self {
            tls,
            tokens,
            admin_token: admin_token.ok_or_else(bad)?,
            node_token: node_token.ok_or_else(bad)?,
        })
    }

    /// The user a bearer token belongs to.
    pub fn authenticate(&self, token: &str) -> Option<&User> {
        // Look every token up so timing does not reveal which prefix matched.
        let mut found = None;
        for (known, user) in &self.tokens {
            if constant_time_eq(known.as_bytes(), token.as_bytes()) {
                found = Some(user);
            }
        }
        found
    }

    /// The join token `rudder agent --token-file` reads: `K10<CA hash>::node:<node token>`
    /// (see `rudder_node::join`).
    pub fn join_token(&self) -> String {
        rudder_node::join::JoinToken::format(&self.tls.ca_pem, &self.node_token)
    }

    /// Writes `dir/kubeconfig` (admin) and `dir/token` (node join token).
    pub fn write_client_files(&self, dir: &Path, server_url: &str) -> Result<PathBuf> {
        let kubeconfig = dir.join("kubeconfig");
        write_private(
            &kubeconfig,
            kubeconfig_yaml(server_url, &self.tls.ca_pem, &self.admin_token).as_bytes(),
        )?;
        write_private(
            &dir.join("token"),
            format!("{}\n", self.join_token()).as_bytes(),
        )?;
        Ok(kubeconfig)
    }
}

/// A kubeconfig for `server_url` trusting `ca_pem` and presenting `token`.
pub fn kubeconfig_yaml(server_url: &str, ca_pem: &str, token: &str) -> String {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: rudder\n  cluster:\n    server: {server_url}\n    certificate-authority-data: {ca}\nusers:\n- name: admin\n  user:\n    token: {token}\ncontexts:\n- name: rudder\n  context:\n    cluster: rudder\n    user: admin\ncurrent-context: rudder\n"
    )
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn random_token() -> String {
    let bytes: [u8; 24] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn write_private(path: &Path, content: &[u8]) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io(&tmp))?;
        file.write_all(content).map_err(io(&tmp))?;
        file.sync_all().map_err(io(&tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io(path))
}

fn ca_params() -> Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "rudder-ca");
    dn.push(DnType::OrganizationName, "rudder");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2124, 1, 1);
    Ok(params)
}

fn load_or_create_tls(dir: &Path, extra_sans: &[String]) -> Result<Tls> {
    let ca_cert_path = dir.join("ca.crt");
    let ca_key_path = dir.join("ca.key");
    let (ca_pem, ca_key) = if ca_cert_path.exists() && ca_key_path.exists() {
        let key_pem = std::fs::read_to_string(&ca_key_path).map_err(io(&ca_key_path))?;
        let cert_pem = std::fs::read_to_string(&ca_cert_path).map_err(io(&ca_cert_path))?;
        (cert_pem, KeyPair::from_pem(&key_pem)?)
    } else {
        let key = KeyPair::generate()?;
        let cert = ca_params()?.self_signed(&key)?;
        write_private(&ca_key_path, key.serialize_pem().as_bytes())?;
        write_private(&ca_cert_path, cert.pem().as_bytes())?;
        (cert.pem(), key)
    };
    // The CA's subject and key identify it; rebuilding its parameters with the stored key signs
    // certificates that chain to the stored CA certificate.
    let issuer = Issuer::new(ca_params()?, ca_key);

    let mut names: Vec<String> = [
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
        "127.0.0.1",
        "::1",
        "10.96.0.1",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        names.push(host.trim().to_owned());
    }
    names.extend(extra_sans.iter().cloned());
    names.sort();
    names.dedup();
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "rudder-apiserver");
    for name in &names {
        params.subject_alt_names.push(match name.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(name.clone().try_into()?),
        });
    }
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2124, 1, 1);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(Tls {
        ca_pem,
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_created_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let first = Credentials::load_or_create(dir.path(), &[]).unwrap();
        let second = Credentials::load_or_create(dir.path(), &["10.0.0.1".into()]).unwrap();
        assert_eq!(first.tls.ca_pem, second.tls.ca_pem);
        assert_eq!(first.admin_token, second.admin_token);
        assert_ne!(first.admin_token, first.node_token);
        let admin = second.authenticate(&first.admin_token).unwrap();
        assert!(admin.groups.contains(&"system:masters".to_owned()));
        assert!(second.authenticate("wrong").is_none());
        assert!(second.authenticate("").is_none());
    }
}
