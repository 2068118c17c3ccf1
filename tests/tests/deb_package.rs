//! The Debian package, built for real and unpacked into a throw-away root
//! (`dpkg-deb -x` for the files, `dpkg-deb -e` for the control files): the
//! binary, the systemd unit, the default config as a conffile, the man page,
//! the completions, and the maintainer script that creates the `hazel` user
//! (docs/install.md). The postinst runs for real against that root
//! (`DPKG_ROOT`), with `getent`, `adduser`, `addgroup`, `chown` and `install
//! -o` replaced by stubs that keep users in the root's own `etc/passwd`.
//!
//! The package is built by `scripts/build-deb.sh --dev` from the debug
//! binary, so the test suite never makes a release build. It needs
//! `cargo-deb` and `dpkg-deb`; without them it fails saying what to
//! install, it never skips.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn require(tool: &str, args: &[&str], install: &str) {
    let ok = Command::new(tool)
        .args(args)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(ok, "`{tool}` is missing: {install}");
}

/// Builds the package once for the whole test binary and returns its path.
fn deb() -> &'static Path {
    static DEB: OnceLock<PathBuf> = OnceLock::new();
    DEB.get_or_init(|| {
        require(
            "cargo",
            &["deb", "--version"],
            "cargo install cargo-deb --version 3.8.0 --locked (scripts/test.sh does)",
        );
        require("dpkg-deb", &["--version"], "apt-get install dpkg");
        let mut script = Command::new("bash");
        script
            .arg(repo().join("scripts/build-deb.sh"))
            .arg("--dev")
            .current_dir(repo());
        // The `CARGO_*` variables cargo sets for this test (CARGO_PKG_NAME,
        // CARGO_MANIFEST_DIR, ...) are watched by dependencies' build
        // scripts (ring, cc): passed on, the script's `cargo build` would
        // rebuild them, and the next `cargo test` rebuild them back.
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            if key.starts_with("CARGO_") && key != "CARGO_HOME" && key != "CARGO_TARGET_DIR" {
                script.env_remove(&*key);
            }
        }
        let stdout = run(&mut script);
        let path = PathBuf::from(
            stdout
                .lines()
                .last()
                .expect("build-deb.sh printed the path")
                .trim(),
        );
        assert!(
            path.extension().is_some_and(|e| e == "deb") && path.is_file(),
            "build-deb.sh's last line is not a .deb: {stdout}"
        );
        path
    })
}

/// The package unpacked: `root` holds its files, `control` its control
/// files (`control`, `conffiles`, `postinst`, ...).
struct Unpacked {
    _dir: tempfile::TempDir,
    root: PathBuf,
    control: PathBuf,
}

fn unpack() -> Unpacked {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let control = dir.path().join("DEBIAN");
    run(Command::new("dpkg-deb").arg("-x").arg(deb()).arg(&root));
    run(Command::new("dpkg-deb").arg("-e").arg(deb()).arg(&control));
    Unpacked {
        _dir: dir,
        root,
        control,
    }
}

fn read(root: &Path, rel: &str) -> String {
    std::fs::read_to_string(root.join(rel)).unwrap_or_else(|e| panic!("{rel} in the package: {e}"))
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn the_deb_installs_the_binary_unit_config_man_page_and_completions() {
    let Unpacked { root, control, .. } = &unpack();

    // The binary, runnable, stamped with its version.
    let hazel = root.join("usr/bin/hazel");
    assert_eq!(mode(&hazel), 0o755);
    let version = run(Command::new(&hazel).arg("--version"));
    assert!(
        version.starts_with(&format!("hazel {} (commit ", env!("CARGO_PKG_VERSION"))),
        "{version}"
    );
    assert!(version.contains(", built "), "{version}");

    // The unit, pointing at the packaged binary and config, installed but
    // not enabled (the config has no hosts yet).
    let unit = [
        "lib/systemd/system/hazel.service",
        "usr/lib/systemd/system/hazel.service",
    ]
    .into_iter()
    .find(|p| root.join(p).is_file())
    .expect("hazel.service in lib/systemd/system or usr/lib/systemd/system");
    let unit = read(root, unit);
    assert!(
        unit.contains("ExecStart=/usr/bin/hazel serve --config /etc/hazel/hazel.yaml"),
        "{unit}"
    );
    assert!(unit.contains("User=hazel"), "{unit}");

    // The default config: the shipped one, a conffile, and a config the
    // agent loads.
    assert_eq!(
        read(root, "etc/hazel/hazel.yaml"),
        std::fs::read_to_string(repo().join("deploy/hazel.yaml")).unwrap()
    );
    let conffiles = read(control, "conffiles");
    assert!(
        conffiles
            .lines()
            .any(|l| l.trim() == "/etc/hazel/hazel.yaml"),
        "conffiles: {conffiles}"
    );
    agent::service::Config::load(&root.join("etc/hazel/hazel.yaml"))
        .expect("the packaged config loads");

    // The man page (gzip, roff with every subcommand) and the completions.
    let man = run(Command::new("gzip")
        .arg("-dc")
        .arg(root.join("usr/share/man/man1/hazel.1.gz")));
    assert!(
        man.contains(".TH hazel 1"),
        "{}",
        &man[..man.len().min(300)]
    );
    for section in ["HAZEL SERVE", "HAZEL POLICY APPLY", "EXIT STATUS"] {
        assert!(man.contains(section), "man page lacks {section}");
    }
    let bash = read(root, "usr/share/bash-completion/completions/hazel");
    assert!(
        bash.contains("complete ") && bash.contains("dry-run"),
        "{bash}"
    );
    let zsh = read(root, "usr/share/zsh/vendor-completions/_hazel");
    assert!(zsh.starts_with("#compdef hazel"), "{zsh}");
    let fish = read(root, "usr/share/fish/vendor_completions.d/hazel.fish");
    assert!(fish.contains("complete -c hazel"), "{fish}");

    let fields = read(control, "control");
    assert!(fields.contains("Package: hazel"), "{fields}");
    assert!(
        fields.contains("adduser"),
        "Depends lacks adduser: {fields}"
    );
}

/// Stubs for the commands of the maintainer scripts that act on the real
/// system: users and groups live in `$DPKG_ROOT/etc/passwd` and `group`,
/// `chown` and `install -o/-g` refuse an owner those files do not have (as
/// the real ones would), and every call is logged to `$DPKG_ROOT/calls`.
const STUBS: &[(&str, &str)] = &[
    (
        "getent",
        r#"f="$DPKG_ROOT/etc/$1"; [ -f "$f" ] && grep "^$2:" "$f" || exit 2"#,
    ),
    (
        "addgroup",
        r#"echo "addgroup $*" >> "$DPKG_ROOT/calls"
for a; do name=$a; done
echo "$name:x:998:" >> "$DPKG_ROOT/etc/group""#,
    ),
    (
        "adduser",
        r#"echo "adduser $*" >> "$DPKG_ROOT/calls"
system=; group=; home=; shell=; gecos=
while [ $# -gt 1 ]; do
  case $1 in
    --system) system=1 ;;
    --ingroup) group=$2; shift ;;
    --home) home=$2; shift ;;
    --shell) shell=$2; shift ;;
    --gecos) gecos=$2; shift ;;
  esac
  shift
done
[ -n "$system" ] || { echo "adduser: not --system" >&2; exit 1; }
grep -q "^$group:" "$DPKG_ROOT/etc/group" || { echo "adduser: no group $group" >&2; exit 1; }
echo "$1:x:998:998:$gecos:$home:$shell" >> "$DPKG_ROOT/etc/passwd""#,
    ),
    (
        "chown",
        r#"echo "chown $*" >> "$DPKG_ROOT/calls"
u=${1%%:*}; g=${1#*:}
[ "$u" = root ] || grep -q "^$u:" "$DPKG_ROOT/etc/passwd" || { echo "chown: invalid user $u" >&2; exit 1; }
[ "$g" = root ] || grep -q "^$g:" "$DPKG_ROOT/etc/group" || { echo "chown: invalid group $g" >&2; exit 1; }
[ -e "$2" ]"#,
    ),
    (
        "install",
        r#"echo "install $*" >> "$DPKG_ROOT/calls"
m=; u=; g=
while [ $# -gt 1 ]; do
  case $1 in
    -d) ;;
    -m) m=$2; shift ;;
    -o) u=$2; shift ;;
    -g) g=$2; shift ;;
    *) echo "install stub: unexpected $1" >&2; exit 1 ;;
  esac
  shift
done
[ -z "$u" ] || [ "$u" = root ] || grep -q "^$u:" "$DPKG_ROOT/etc/passwd" || { echo "install: invalid user $u" >&2; exit 1; }
[ -z "$g" ] || [ "$g" = root ] || grep -q "^$g:" "$DPKG_ROOT/etc/group" || { echo "install: invalid group $g" >&2; exit 1; }
mkdir -p "$1" && chmod "$m" "$1""#,
    ),
    (
        "deb-systemd-helper",
        r#"echo "deb-systemd-helper $*" >> "$DPKG_ROOT/calls""#,
    ),
    (
        "deb-systemd-invoke",
        r#"echo "deb-systemd-invoke $*" >> "$DPKG_ROOT/calls""#,
    ),
    ("systemctl", r#"echo "systemctl $*" >> "$DPKG_ROOT/calls""#),
];

/// Runs a maintainer script of the package against `root` with the stubs
/// first on PATH.
fn maintainer_script(control: &Path, script: &str, root: &Path, args: &[&str]) {
    let bin = root.join("stub-bin");
    std::fs::create_dir_all(&bin).unwrap();
    for (name, body) in STUBS {
        let path = bin.join(name);
        std::fs::write(&path, format!("#!/bin/sh\nset -e\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    run(Command::new("sh")
        .arg("-e")
        .arg(control.join(script))
        .args(args)
        .env("DPKG_ROOT", root)
        .env("PATH", path));
}

#[test]
fn the_postinst_creates_the_hazel_system_user_its_state_directory_and_keys_once() {
    let Unpacked { root, control, .. } = &unpack();
    let postinst = read(control, "postinst");
    assert!(!postinst.contains("#DEBHELPER#"), "{postinst}");
    assert!(postinst.contains("deb-systemd-helper"), "{postinst}");
    run(Command::new("sh").arg("-n").arg(control.join("postinst")));
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\n").unwrap();

    maintainer_script(control, "postinst", root, &["configure", ""]);

    let passwd = read(root, "etc/passwd");
    let user = passwd
        .lines()
        .find(|l| l.starts_with("hazel:"))
        .unwrap_or_else(|| panic!("no hazel user: {passwd}"));
    let fields: Vec<&str> = user.split(':').collect();
    assert_eq!(fields[5], "/var/lib/hazel", "{user}");
    assert_eq!(fields[6], "/usr/sbin/nologin", "{user}");
    assert!(read(root, "etc/group").contains("\nhazel:"));
    let calls = read(root, "calls");
    assert!(
        calls.contains("install -d -m 0750 -o hazel -g hazel"),
        "{calls}"
    );
    assert!(
        calls.contains(&format!(
            "chown root:hazel {}",
            root.join("etc/hazel/hazel.yaml").display()
        )),
        "{calls}"
    );
    assert_eq!(mode(&root.join("var/lib/hazel")), 0o750);
    assert_eq!(mode(&root.join("etc/hazel/hazel.yaml")), 0o640);
    let mut keys = Vec::new();
    for key in ["etc/hazel/jwt.key", "etc/hazel/secret.key"] {
        let text = read(root, key);
        assert_eq!(mode(&root.join(key)), 0o600, "{key}");
        assert!(
            text.len() == 65 && text.trim_end().chars().all(|c| c.is_ascii_hexdigit()),
            "{key} is not 32 random bytes in hex: {text:?}"
        );
        keys.push(text);
    }
    assert_ne!(keys[0], keys[1]);

    // An upgrade runs configure again: no second user, the keys kept.
    maintainer_script(control, "postinst", root, &["configure", "0.1.0-1"]);
    assert_eq!(read(root, "etc/passwd").matches("\nhazel:").count(), 1);
    assert_eq!(read(root, "calls").matches("adduser ").count(), 1);
    assert_eq!(read(root, "etc/hazel/jwt.key"), keys[0]);
    assert_eq!(read(root, "etc/hazel/secret.key"), keys[1]);
}

#[test]
fn purging_the_package_removes_the_keys_and_the_state_but_removing_keeps_them() {
    let Unpacked { root, control, .. } = &unpack();
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\n").unwrap();
    maintainer_script(control, "postinst", root, &["configure", ""]);
    std::fs::write(root.join("var/lib/hazel/hazel.db"), "ledger").unwrap();

    maintainer_script(control, "postrm", root, &["remove"]);
    assert!(root.join("etc/hazel/jwt.key").is_file());
    assert!(root.join("var/lib/hazel/hazel.db").is_file());

    maintainer_script(control, "postrm", root, &["purge"]);
    assert!(!root.join("etc/hazel/jwt.key").exists());
    assert!(!root.join("etc/hazel/secret.key").exists());
    assert!(!root.join("var/lib/hazel").exists());
}

/// The Containerfile's structure only: the image itself is not built here
/// (its base images come from a container registry this project's CI
/// cannot reach; docs/install.md says so).
#[test]
fn the_containerfile_has_two_stages_and_a_non_root_user() {
    let file = std::fs::read_to_string(repo().join("deploy/Containerfile")).unwrap();
    let froms: Vec<&str> = file.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(froms.len(), 2, "{froms:?}");
    assert!(froms[0].ends_with(" AS build"), "{froms:?}");
    assert!(file.contains("COPY --from=build /out/ /"), "{file}");
    let user = file
        .lines()
        .filter_map(|l| l.strip_prefix("USER "))
        .next_back()
        .expect("a USER line");
    assert!(
        !user.starts_with("root") && !user.starts_with('0'),
        "{user}"
    );
    // The image rewrites the shipped config's loopback listen address; the
    // line it rewrites must be there.
    let config = std::fs::read_to_string(repo().join("deploy/hazel.yaml")).unwrap();
    assert!(
        config.lines().any(|l| l == "listen: 127.0.0.1:8088"),
        "{config}"
    );
    assert!(file.contains("s/^listen: 127\\.0\\.0\\.1:8088$/listen: 0.0.0.0:8088/"));
    let ignore = std::fs::read_to_string(repo().join(".dockerignore")).unwrap();
    assert!(ignore.lines().any(|l| l.trim() == "target"), "{ignore}");
}
