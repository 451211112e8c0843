//! End to end: the default image is a coding agent's workbench (Python
//! packages in a venv, a C toolchain, Node, a non-root account), and a
//! server that trusts the host's CA bundle hands it to every sandbox.
//!
//! Network traffic stays inside the sandbox: package indexes and TLS
//! servers run there, on its loopback.

use anyhow::{bail, Context, Result};
use sbx_api::client::SandboxClient;
use sbx_api::{ExecRequest, StartProcessRequest};
use sbx_tests::{eventually, Engine, Server};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Runs `script` in the sandbox as `user` (root when `None`); its stdout,
/// or an error with its stderr.
async fn run_as(sandbox: &SandboxClient<'_>, user: Option<&str>, script: &str) -> Result<String> {
    let result = sandbox
        .exec(&ExecRequest {
            user: user.map(str::to_owned),
            ..ExecRequest::shell(script)
        })
        .await?;
    if result.exit_code != 0 {
        bail!(
            "{script:?} exited {}: {}{}",
            result.exit_code,
            result.stdout,
            result.stderr
        );
    }
    Ok(result.stdout)
}

async fn run(sandbox: &SandboxClient<'_>, script: &str) -> Result<String> {
    run_as(sandbox, None, script).await
}

/// Writes a package index for one pure-Python wheel, `sbxprobe` 1.0, under
/// `dir` (`dir/simple/sbxprobe/`), as a PEP 503 "simple" index served
/// from files.
const MAKE_INDEX: &str = r#"
import base64, hashlib, os, sys, zipfile
root = sys.argv[1]
name = "sbxprobe-1.0-py3-none-any.whl"
files = {
    "sbxprobe/__init__.py": "ANSWER = 42\n",
    "sbxprobe-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: sbxprobe\nVersion: 1.0\n",
    "sbxprobe-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: sbx-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
project = os.path.join(root, "simple", "sbxprobe")
os.makedirs(project, exist_ok=True)
record = []
with zipfile.ZipFile(os.path.join(project, name), "w") as wheel:
    for path, text in files.items():
        data = text.encode()
        wheel.writestr(path, data)
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append("sbxprobe-1.0.dist-info/RECORD,,")
    wheel.writestr("sbxprobe-1.0.dist-info/RECORD", "\n".join(record) + "\n")
with open(os.path.join(project, "index.html"), "w") as index:
    index.write(f'<a href="{name}">{name}</a>\n')
"#;

/// Serves `dir` over HTTP, or HTTPS with the certificate and key given,
/// on 127.0.0.1:`port` inside the sandbox.
const SERVE: &str = r#"
import functools, http.server, ssl, sys
directory, port = sys.argv[1], int(sys.argv[2])
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=directory)
server = http.server.HTTPServer(("127.0.0.1", port), handler)
if len(sys.argv) > 3:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(sys.argv[3], sys.argv[4])
    server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
"#;

/// Starts an index of `sbxprobe` served on `port` in the background (with
/// `tls`: the certificate and key paths inside), and waits until it
/// answers.
async fn serve_index(
    sandbox: &SandboxClient<'_>,
    port: u16,
    tls: Option<(&str, &str)>,
) -> Result<()> {
    run(
        sandbox,
        &format!("cat > /tmp/make_index.py <<'PY'\n{MAKE_INDEX}PY\ncat > /tmp/serve.py <<'PY'\n{SERVE}PY\npython3 /tmp/make_index.py /srv/index"),
    )
    .await?;
    let tls_args = tls.map_or(String::new(), |(cert, key)| format!(" {cert} {key}"));
    sandbox
        .start_process(&StartProcessRequest {
            shell: Some(format!(
                "exec python3 /tmp/serve.py /srv/index {port}{tls_args}"
            )),
            ..StartProcessRequest::default()
        })
        .await?;
    // Up once the port accepts a connection (TLS or not).
    let probe =
        format!("python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", {port}), 1)'");
    let up = eventually(Duration::from_secs(20), || async {
        matches!(sandbox.exec(&ExecRequest::shell(&probe)).await, Ok(result) if result.exit_code == 0)
    })
    .await;
    if !up {
        bail!("the index on port {port} never answered");
    }
    Ok(())
}

async fn the_default_image_is_a_coding_agents_workbench(engine: Engine) -> Result<()> {
    let server = Server::start(engine).await?;
    let client = server.client();
    let id = server.new_sandbox().await?;
    let sandbox = client.sandbox(&id);

    // pip into a venv (python3-venv, python3-pip), from an index on
    // loopback: the way a project's dependencies go in.
    serve_index(&sandbox, 8000, None).await?;
    let answer = run(
        &sandbox,
        "python3 -m venv /tmp/venv && /tmp/venv/bin/pip install -q --disable-pip-version-check \
         --index-url http://127.0.0.1:8000/simple sbxprobe && \
         /tmp/venv/bin/python -c 'import sbxprobe; print(sbxprobe.ANSWER)'",
    )
    .await?;
    assert_eq!(answer, "42\n");

    // A C toolchain (build-essential) that builds and links.
    let compiled = run(
        &sandbox,
        "cat > /tmp/answer.c <<'C'\n#include <stdio.h>\nint main(void) { printf(\"%d\\n\", 6 * 7); return 0; }\nC\n\
         cc -O2 -o /tmp/answer /tmp/answer.c && /tmp/answer && pkg-config --version >/dev/null && echo built",
    )
    .await?;
    assert_eq!(compiled, "42\nbuilt\n");

    // Node and npm, and the small tools.
    let node = run(&sandbox, "node -e 'console.log(6 * 7)' && npm --version").await?;
    let mut lines = node.lines();
    assert_eq!(lines.next(), Some("42"));
    assert!(
        lines
            .next()
            .is_some_and(|version| version.split('.').count() == 3),
        "npm --version: {node:?}"
    );
    // localhost resolves (glibc reads /etc/hosts), on Docker too.
    run(
        &sandbox,
        "python3 -c 'import socket; socket.getaddrinfo(\"localhost\", 80)'",
    )
    .await?;
    run(
        &sandbox,
        "for tool in ssh wget tree file sqlite3 zip less git curl jq rg; do \
         command -v $tool >/dev/null || { echo missing $tool >&2; exit 1; }; done",
    )
    .await?;

    // The non-root account: exec's `user` names it, with its own home.
    let who = run_as(
        &sandbox,
        Some("user"),
        "id -u; id -g; echo $HOME; cd && touch mine && stat -c %u mine",
    )
    .await?;
    assert_eq!(who, "1000\n1000\n/home/user\n1000\n");
    let denied = sandbox
        .exec(&ExecRequest {
            user: Some("user".into()),
            ..ExecRequest::shell("touch /root/not-mine")
        })
        .await?;
    assert_ne!(denied.exit_code, 0, "user is not root");
    // Root stays the default.
    assert_eq!(run(&sandbox, "id -u").await?, "0\n");
    Ok(())
}

/// A CA and a certificate for `localhost` it signed, made with the host's
/// openssl in `dir`: (CA certificate, server certificate, server key), as
/// PEM text.
fn test_ca(dir: &Path) -> Result<(String, String, String)> {
    let openssl = |args: &[&str]| -> Result<()> {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()?;
        if !output.status.success() {
            bail!(
                "openssl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    };
    let new_key = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    let ca = format!("req -x509 {new_key} -keyout ca.key -out ca.crt -days 2");
    openssl(&[ca.split(' ').collect(), vec!["-subj", "/CN=sbx test CA"]].concat())?;
    let request = format!("req {new_key} -keyout server.key -out server.csr");
    openssl(&[request.split(' ').collect(), vec!["-subj", "/CN=localhost"]].concat())?;
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )?;
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ])?;
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).context(name.to_owned());
    Ok((read("ca.crt")?, read("server.crt")?, read("server.key")?))
}

async fn a_server_that_trusts_the_host_ca_hands_it_to_every_sandbox(engine: Engine) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (ca, cert, key) = test_ca(dir.path())?;
    let bundle = dir.path().join("bundle.pem");
    std::fs::write(&bundle, &ca)?;

    // A bundle that holds no certificate fails the start, loudly.
    let bogus = dir.path().join("bogus.pem");
    std::fs::write(&bogus, "not a certificate\n")?;
    let refused = Server::start_with(engine, &["--trust-host-ca", &bogus.to_string_lossy()]).await;
    let message = format!("{:#}", refused.err().context("a bogus bundle is refused")?);
    assert!(message.contains("holds no PEM certificate"), "{message}");

    let trusting =
        Server::start_with(engine, &["--trust-host-ca", &bundle.to_string_lossy()]).await?;
    let plain = Server::start(engine).await?;
    let (mut outcomes, mut said) = (Vec::new(), Vec::new());
    for server in [&trusting, &plain] {
        let client = server.client();
        let id = server.new_sandbox().await?;
        let sandbox = client.sandbox(&id);
        run(
            &sandbox,
            &format!(
                "mkdir -p /srv/tls && cat > /srv/tls/server.crt <<'PEM'\n{cert}PEM\n\
                 cat > /srv/tls/server.key <<'PEM'\n{key}PEM\n"
            ),
        )
        .await?;
        serve_index(
            &sandbox,
            8443,
            Some(("/srv/tls/server.crt", "/srv/tls/server.key")),
        )
        .await?;
        // curl and git read the system bundle; pip its own unless told
        // (PIP_CERT); Node its own plus NODE_EXTRA_CA_CERTS.
        let probes = [
            "curl -sSf -o /dev/null https://localhost:8443/simple/sbxprobe/",
            // Trusted, git gets as far as a 404; else it names the certificate.
            "! git ls-remote https://localhost:8443/none.git 2>&1 | grep -q certificate",
            "python3 -m venv /tmp/venv && /tmp/venv/bin/pip download -q --no-deps \
             --disable-pip-version-check --index-url https://localhost:8443/simple -d /tmp/wheels sbxprobe",
            // 127.0.0.1: Node may try ::1 first for localhost.
            "node -e \"require('https').get('https://127.0.0.1:8443/', r => process.exit(r.statusCode === 200 ? 0 : 1)).on('error', e => { console.error(e.message); process.exit(1) })\"",
        ];
        let mut passed = Vec::new();
        for probe in probes {
            let result = sandbox.exec(&ExecRequest::shell(probe)).await?;
            passed.push(result.exit_code == 0);
            said.push(format!("{probe}: {}{}", result.stdout, result.stderr));
        }
        outcomes.push(passed);
    }
    assert_eq!(
        outcomes,
        [vec![true; 4], vec![false; 4]],
        "every client trusts the CA in a trusting server's sandbox, none elsewhere: {said:#?}"
    );
    let client = trusting.client();
    let id = trusting.new_sandbox().await?;
    let sandbox = client.sandbox(&id);
    assert_eq!(
        run(&sandbox, &format!("cat {}", sbx_api::CA_BUNDLE_PATH)).await?,
        ca,
        "the host's bundle replaces the image's"
    );
    let written = sandbox
        .exec(&ExecRequest::shell(format!(
            "echo evil >> {}",
            sbx_api::CA_BUNDLE_PATH
        )))
        .await?;
    assert_ne!(written.exit_code, 0, "the bundle is read-only inside");
    assert_eq!(
        std::fs::read_to_string(&bundle)?,
        ca,
        "and untouched outside"
    );
    Ok(())
}

sbx_tests::on_every_runtime!(
    the_default_image_is_a_coding_agents_workbench,
    // hosts_only: the host's CA bundle is not on the cluster's nodes.
    ; hosts_only:
    a_server_that_trusts_the_host_ca_hands_it_to_every_sandbox,
);
