"""upgrade.cfg parsing: the vendor's format, its defaults, and one clear error per mistake."""

from __future__ import annotations

import hashlib
import textwrap
from pathlib import Path

import pytest

from scmflow.catalog import Catalog, load_catalog
from scmflow.config import (
    DEFAULT_BACKUP_PATH,
    DEFAULT_UPGRADE_PACK_PATH,
    ConfigFile,
    StaleConfigError,
    UpgradeConfig,
    load_config,
    load_recorded_config,
    parse_config,
    select_hosts,
    select_services,
)
from scmflow.configrules import normalise_install_path
from scmflow.errors import ConfigError
from scmflow.hooks import Hooks

DATA = Path(__file__).parent / "data" / "configs"
SAMPLE = Path(__file__).parent.parent / "conf" / "upgrade.cfg"
CFG = "test.cfg"

INSTALL = "[installconfig]\nInstallPath, InstallUser\n/opt, scmadmin\n"
HOSTS = "[host]\nHostName, SshPort, User, Password, JavaHome\nh1, 22, root, , \n"


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


def parse(text: str, catalog: Catalog) -> UpgradeConfig:
    return parse_config(textwrap.dedent(text), CFG, catalog)


def parse_error(text: str, catalog: Catalog) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(text, catalog)
    message = str(info.value)
    assert "\n" not in message, "error messages are one line"
    assert message.startswith(CFG), "error messages name the file"
    return info.value


def assert_names(err: ConfigError, line: int | None, field: str = "") -> None:
    message = str(err)
    assert err.line == line
    assert err.field == field
    if line is not None:
        assert message.startswith(f"{CFG}:{line}")
    if field:
        assert f"field {field}:" in message


# --- the vendor's own configs ---------------------------------------------------------


def test_vendor_basic_sample_parses(catalog: Catalog) -> None:
    config = load_config(DATA / "vendor_basic.cfg", catalog)
    assert config.install_path == "/opt/sequoiacm"
    assert config.install_user == "scmadmin"
    assert config.services is None
    assert config.upgrade_pack_path == "/opt/upgrade/sequoiacm"
    assert config.backup_path == "/opt/backup/sequoiacm"
    assert config.warnings == ()
    (host,) = config.hosts
    assert (host.name, host.port, host.user) == ("192.168.16.195", 22, "root")
    assert host.password == "sequoiadb"
    assert host.password_source == "literal"
    assert host.java_home == "/usr/local/java/jdk1.8.0_221"
    assert host.line == 7


def test_vendor_rolling_sample_parses_with_extra_columns_and_empty_cells(
    catalog: Catalog,
) -> None:
    config = load_config(DATA / "vendor_rolling.cfg", catalog)
    assert config.install_path == "/opt/sequoiacm"
    assert config.install_user == "scmadmin"
    assert config.host_names() == ("scmServer-c", "scmServer-d")
    assert [h.line for h in config.hosts] == [8, 9]
    assert all(h.java_home is None for h in config.hosts)
    assert all(h.password == "sequoiadb" for h in config.hosts)
    # InstallUserPassword and InstallUserGroup are known vendor columns: no warning.
    assert config.warnings == ()


def test_shipped_sample_parses(catalog: Catalog) -> None:
    config = load_config(SAMPLE, catalog)
    assert config.install_path == "/opt/sequoiacm"
    first, second = config.hosts
    assert first.password_source == "env"
    assert first.password_env == "SCM_SSH_PWD"
    assert first.password is None
    assert second.password_source == "none"
    assert second.java_home is None
    assert config.services is None
    assert config.warnings == ()


def test_crlf_bom_quotes_escapes_and_markers(catalog: Catalog) -> None:
    config = load_config(DATA / "crlf_markers.cfg", catalog)
    assert config.install_path == "/data/sequoiacm"
    assert config.install_user == "scmadmin"
    hosts = {h.name: h for h in config.hosts}
    assert hosts["h1"].password == "pa,ss"
    assert hosts["h1"].port == 2222
    assert hosts["h2"].user == "admin"
    assert hosts["h2"].password_source == "prompt"
    assert hosts["h2"].password is None
    assert hosts["h2"].needs_password
    assert hosts["h2"].java_home == "/usr/lib/jvm/java-8"
    assert (hosts["h3"].password_source, hosts["h3"].password_env) == ("env", "H3_PWD")
    assert hosts["h4"].password == "a,b\\c\\d#e"
    assert (hosts["h5"].password_source, hosts["h5"].password) == ("literal", "-")
    assert hosts["h6"].password == "it's"
    assert config.services == ("gateway", "content-server")
    assert config.upgrade_pack_path == DEFAULT_UPGRADE_PACK_PATH
    assert config.backup_path == "/srv/scm backup"
    path = str(DATA / "crlf_markers.cfg")
    assert config.warnings == (
        f"{path}:7: unknown column 'Rack' in [host] ignored",
        f"{path}:19: unknown key 'retries' in [config] ignored",
    )


# --- format bullets -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/opt", "/opt/sequoiacm"),
        ("/opt/", "/opt/sequoiacm"),
        ("/opt////", "/opt/sequoiacm"),
        ("/opt//sequoiacm//", "/opt/sequoiacm"),
        ("", "/sequoiacm"),
        ("/", "/sequoiacm"),
        ("/data/./scm", "/data/scm/sequoiacm"),
    ],
)
def test_install_path_is_normalised(raw: str, expected: str, catalog: Catalog) -> None:
    assert normalise_install_path(raw) == expected
    text = f"[installconfig]\nInstallPath, InstallUser\n{raw}, scmadmin\n{HOSTS}"
    assert parse(text, catalog).install_path == expected


def test_install_user_defaults_when_column_absent_or_empty(catalog: Catalog) -> None:
    absent = parse(f"[installconfig]\nInstallPath\n/opt\n{HOSTS}", catalog)
    empty = parse(f"[installconfig]\nInstallPath, InstallUser\n/opt,\n{HOSTS}", catalog)
    assert absent.install_user == empty.install_user == "scmadmin"


def test_ssh_port_defaults_when_column_absent_or_empty(catalog: Catalog) -> None:
    absent = parse(f"{INSTALL}[host]\nHostName, User\nh1, root\n", catalog)
    empty = parse(f"{INSTALL}[host]\nHostName, SshPort, User\nh1, , root\n", catalog)
    assert absent.hosts[0].port == empty.hosts[0].port == 22
    assert absent.hosts[0].password_source == "none"


def test_config_section_is_optional(catalog: Catalog) -> None:
    config = parse(INSTALL + HOSTS, catalog)
    assert config.services is None
    assert config.upgrade_pack_path == DEFAULT_UPGRADE_PACK_PATH
    assert config.backup_path == DEFAULT_BACKUP_PATH


@pytest.mark.parametrize("value", ["", "/", "//"])
def test_empty_or_root_directory_means_default(value: str, catalog: Catalog) -> None:
    text = f"{INSTALL}{HOSTS}[config]\nupgradePackPath={value}\nbackupPath = {value}\n"
    config = parse(text, catalog)
    assert config.upgrade_pack_path == DEFAULT_UPGRADE_PACK_PATH
    assert config.backup_path == DEFAULT_BACKUP_PATH


def test_directories_are_normalised(catalog: Catalog) -> None:
    text = f"{INSTALL}{HOSTS}[config]\nupgradePackPath=/srv//pack/\nbackupPath=/srv/bk///\n"
    config = parse(text, catalog)
    assert (config.upgrade_pack_path, config.backup_path) == ("/srv/pack", "/srv/bk")


def test_comments_and_blank_lines_anywhere(catalog: Catalog) -> None:
    text = """
        # leading comment

        [installconfig]
          # indented comment
        InstallPath, InstallUser

        /opt, scmadmin
        [host]
        HostName, SshPort, User, Password, JavaHome
        # between rows
        h1, 22, root, ,

        h2, 22, root, p#w,
        [config]
        # service=gateway
    """
    config = parse(text, catalog)
    assert config.host_names() == ("h1", "h2")
    assert config.hosts[1].password == "p#w"
    assert config.services is None


def test_service_list_is_trimmed_deduplicated_and_validated(catalog: Catalog) -> None:
    text = f"{INSTALL}{HOSTS}[config]\nservice= daemon ,gateway,,daemon\n"
    assert parse(text, catalog).services == ("daemon", "gateway")


@pytest.mark.parametrize("value", ["", " , "])
def test_empty_service_list_means_all(value: str, catalog: Catalog) -> None:
    assert parse(f"{INSTALL}{HOSTS}[config]\nservice={value}\n", catalog).services is None


def test_section_names_columns_and_keys_ignore_case(catalog: Catalog) -> None:
    text = """
        [INSTALLCONFIG]
        installpath, INSTALLUSER
        /opt, admin
        [Host]
        hostname, sshport, user
        h1, 2022, root
        [Config]
        SERVICE=gateway
        BackupPath=/bk
    """
    config = parse(text, catalog)
    assert config.install_user == "admin"
    assert config.hosts[0].port == 2022
    assert config.services == ("gateway",)
    assert config.backup_path == "/bk"


def test_quoting_rules(catalog: Catalog) -> None:
    text = f"""{INSTALL}[host]
        HostName, User, Password, JavaHome
        h1, root, '  spaced, out  ', '/usr/java'
        h2, root, O'Brien,
        h3, root, back\\slash,
        h4, root, 'esc\\'aped',
        h5, root,  '',
    """
    hosts = {h.name: h for h in parse(text, catalog).hosts}
    assert hosts["h1"].password == "  spaced, out  "
    assert hosts["h1"].java_home == "/usr/java"
    assert hosts["h2"].password == "O'Brien"
    assert hosts["h3"].password == "back\\slash"
    assert hosts["h4"].password == "esc'aped"
    # A quoted empty cell is an empty literal password, not key login.
    assert (hosts["h5"].password_source, hosts["h5"].password) == ("literal", "")


def test_quoted_config_value(catalog: Catalog) -> None:
    text = f"{INSTALL}{HOSTS}[config]\nbackupPath = '/srv/my backup, old'\n"
    assert parse(text, catalog).backup_path == "/srv/my backup, old"


def test_password_never_in_repr_or_record(catalog: Catalog) -> None:
    config = load_config(DATA / "vendor_basic.cfg", catalog)
    assert "sequoiadb" not in repr(config)
    assert "sequoiadb" not in repr(config.hosts[0])
    record = config.hosts[0].to_record()
    assert "sequoiadb" not in repr(record)
    assert record == {
        "name": "192.168.16.195",
        "port": 22,
        "user": "root",
        "java_home": "/usr/local/java/jdk1.8.0_221",
        "password_source": "literal",
    }


def test_with_password_resolves_a_marker(catalog: Catalog) -> None:
    text = f"{INSTALL}[host]\nHostName, User, Password\nh1, root, -\n"
    host = parse(text, catalog).hosts[0]
    assert host.needs_password
    resolved = host.with_password("s3cret")
    assert resolved.password == "s3cret"
    assert resolved.password_source == "prompt"
    assert not resolved.needs_password
    assert host.password is None, "the original stays unchanged"


# --- --service and --host -------------------------------------------------------------


def test_select_services(catalog: Catalog) -> None:
    assert select_services("gateway, daemon,gateway", catalog) == ("gateway", "daemon")


def test_select_services_unknown_lists_valid_names(catalog: Catalog) -> None:
    with pytest.raises(ConfigError) as info:
        select_services("gateway,gatewya", catalog)
    message = str(info.value)
    assert info.value.field == "--service"
    assert "gatewya" in message
    assert "service-center" in message and "non-service" in message


def test_select_services_empty(catalog: Catalog) -> None:
    with pytest.raises(ConfigError, match="no service named"):
        select_services(" , ", catalog)


def test_select_hosts_keeps_config_order(catalog: Catalog) -> None:
    config = load_config(DATA / "crlf_markers.cfg", catalog)
    chosen = select_hosts("h3,H1,h3", config)
    assert [h.name for h in chosen] == ["h1", "h3"]


def test_select_hosts_unknown(catalog: Catalog) -> None:
    config = load_config(DATA / "vendor_rolling.cfg", catalog)
    with pytest.raises(ConfigError) as info:
        select_hosts("scmServer-c,scmServer-x", config)
    message = str(info.value)
    assert info.value.field == "--host"
    assert "'scmServer-x' is not in the configuration" in message
    assert "scmServer-c, scmServer-d" in message


def test_select_hosts_empty(catalog: Catalog) -> None:
    config = load_config(DATA / "vendor_rolling.cfg", catalog)
    with pytest.raises(ConfigError, match="no host named"):
        select_hosts("", config)


# --- file errors ----------------------------------------------------------------------


def test_missing_file(tmp_path: Path, catalog: Catalog) -> None:
    path = tmp_path / "absent.cfg"
    with pytest.raises(ConfigError) as info:
        load_config(path, catalog)
    assert str(info.value) == (
        f"{path}: cannot read the upgrade configuration: No such file or directory"
    )


def test_directory_instead_of_file(tmp_path: Path, catalog: Catalog) -> None:
    with pytest.raises(ConfigError, match="cannot read the upgrade configuration"):
        load_config(tmp_path, catalog)


def test_non_utf8_file_names_the_line(tmp_path: Path, catalog: Catalog) -> None:
    path = tmp_path / "latin1.cfg"
    path.write_bytes((INSTALL + "[host]\nHostName, User\nh\xe9, root\n").encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_config(path, catalog)
    assert info.value.line == 6
    assert str(info.value) == f"{path}:6: not UTF-8 text (byte 0xe9)"


# --- the config file a run records -----------------------------------------------------

PASSWORD_HOSTS = "[host]\nHostName, SshPort, User, Password, JavaHome\nh1, 22, ops, Zq-s3cr3t, \n"


def test_a_loaded_config_names_its_file_by_absolute_path_and_sha256(
    tmp_path: Path, catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = ("\ufeff" + INSTALL + PASSWORD_HOSTS).encode()
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "upgrade.cfg").write_bytes(raw)
    monkeypatch.chdir(tmp_path / "conf")
    config = load_config(Path("..") / "conf" / "upgrade.cfg", catalog)
    # absolute and normalised; the digest is of the bytes as read, BOM included
    assert config.file == ConfigFile(str(tmp_path / "conf" / "upgrade.cfg"), hashlib.sha256(raw).hexdigest())
    assert config.file.to_record() == {"path": config.file.path, "sha256": config.file.sha256}
    assert ConfigFile.from_record(config.file.to_record()) == config.file
    assert "Zq-s3cr3t" not in repr(config.file.to_record())
    assert parse_config(INSTALL + PASSWORD_HOSTS, CFG, catalog).file is None


@pytest.mark.parametrize(
    ("record", "problem"),
    [
        ({"sha256": "0" * 64}, "absolute path"),
        ({"path": "upgrade.cfg", "sha256": "0" * 64}, "absolute path"),
        ({"path": "/u.cfg"}, "sha256"),
        ({"path": "/u.cfg", "sha256": "0" * 63}, "sha256"),
        ({"path": "/u.cfg", "sha256": "A" * 64}, "sha256"),
    ],
)
def test_a_config_record_needs_an_absolute_path_and_a_sha256(record: dict[str, object], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        ConfigFile.from_record(record)


def test_the_recorded_config_is_read_only_while_its_bytes_are_unchanged(
    tmp_path: Path, catalog: Catalog
) -> None:
    path = tmp_path / "upgrade.cfg"
    path.write_text(INSTALL + PASSWORD_HOSTS)
    recorded = load_config(path, catalog).file
    assert recorded is not None

    config = load_recorded_config(recorded, catalog)
    assert config.file == recorded and config.path == str(path)
    assert config.hosts[0].password == "Zq-s3cr3t"

    path.write_text(INSTALL + PASSWORD_HOSTS.replace("Zq-s3cr3t", "Zq-s3cr3u"))
    with pytest.raises(StaleConfigError) as info:
        load_recorded_config(recorded, catalog)
    assert str(info.value) == f"the config recorded in the status file, {path}, has changed since the run"
    assert info.value.exit_code == 2

    path.unlink()
    with pytest.raises(StaleConfigError, match=r", is missing$"):
        load_recorded_config(recorded, catalog)
    path.mkdir()
    with pytest.raises(StaleConfigError, match=r", cannot be read \(Is a directory\)$"):
        load_recorded_config(recorded, catalog)


# --- structural errors ----------------------------------------------------------------


@pytest.mark.parametrize("section", ["installconfig", "host"])
def test_missing_section(section: str, catalog: Catalog) -> None:
    text = (INSTALL if section == "host" else HOSTS) + "[config]\n"
    err = parse_error(text, catalog)
    assert_names(err, None)
    assert str(err) == f"{CFG}: missing section [{section}]"


def test_empty_file(catalog: Catalog) -> None:
    assert "missing section [installconfig]" in str(parse_error("# nothing\n", catalog))


def test_duplicate_section(catalog: Catalog) -> None:
    err = parse_error(INSTALL + HOSTS + "[Host]\nHostName, User\nh9, root\n", catalog)
    assert_names(err, 7)
    assert "duplicate section [host] (first at line 4)" in str(err)


def test_line_before_any_section(catalog: Catalog) -> None:
    err = parse_error("# comment\nInstallPath=/opt\n" + INSTALL + HOSTS, catalog)
    assert_names(err, 2)
    assert "before the first [section]" in str(err)


def test_malformed_section_line(catalog: Catalog) -> None:
    err = parse_error(INSTALL + "[host\n", catalog)
    assert_names(err, 4)
    assert "malformed section line" in str(err)


def test_unknown_section(catalog: Catalog) -> None:
    err = parse_error(INSTALL + "[hosts]\nHostName, User\nh1, root\n", catalog)
    assert_names(err, 4)
    assert "unknown section [hosts]" in str(err)


def test_empty_table_section(catalog: Catalog) -> None:
    err = parse_error(INSTALL + "[host]\n# nothing yet\n[config]\n", catalog)
    assert_names(err, 4)
    assert "section [host] is empty" in str(err)


def test_host_section_without_rows(catalog: Catalog) -> None:
    err = parse_error(INSTALL + "[host]\nHostName, User\n", catalog)
    assert_names(err, 4)
    assert "lists no host" in str(err)


def test_table_section_written_as_key_value(catalog: Catalog) -> None:
    err = parse_error(INSTALL + "[host]\nHostName=h1\n", catalog)
    assert_names(err, 5)
    assert "section [host] must be a table" in str(err)


def test_installconfig_without_row(catalog: Catalog) -> None:
    err = parse_error("[installconfig]\nInstallPath, InstallUser\n" + HOSTS, catalog)
    assert_names(err, 1)
    assert "has no row (it needs exactly one)" in str(err)


def test_installconfig_with_two_rows(catalog: Catalog) -> None:
    err = parse_error(INSTALL + "/data, scmadmin\n" + HOSTS, catalog)
    assert_names(err, 4)
    assert "has 2 rows (it needs exactly one)" in str(err)


@pytest.mark.parametrize(
    ("text", "line", "column"),
    [
        ("[installconfig]\nInstallUser\nscmadmin\n" + HOSTS, 2, "InstallPath"),
        (INSTALL + "[host]\nSshPort, User\n22, root\n", 5, "HostName"),
        (INSTALL + "[host]\nHostName, Password\nh1, pw\n", 5, "User"),
    ],
)
def test_header_missing_required_column(
    text: str, line: int, column: str, catalog: Catalog
) -> None:
    err = parse_error(text, catalog)
    assert_names(err, line, column)
    assert "lacks the required column(s)" in str(err)


def test_duplicate_column(catalog: Catalog) -> None:
    err = parse_error(INSTALL + "[host]\nHostName, User, hostname\nh1, root, h2\n", catalog)
    assert_names(err, 5, "hostname")
    assert "duplicate column" in str(err)


def test_empty_column_name(catalog: Catalog) -> None:
    err = parse_error(INSTALL + "[host]\nHostName, , User\nh1, x, root\n", catalog)
    assert_names(err, 5, "header")
    assert "empty column name" in str(err) and "(column 2)" in str(err)


def test_row_with_too_many_cells(catalog: Catalog) -> None:
    err = parse_error(INSTALL + "[host]\nHostName, User\nh1, root\nh2, root, extra\n", catalog)
    assert_names(err, 7, "cell 3")
    assert "row has 3 cells but the header has 2 columns" in str(err)


def test_row_with_too_few_cells(catalog: Catalog) -> None:
    text = INSTALL + "[host]\nHostName, SshPort, User, Password, JavaHome\nh1, 22, root, pw\n"
    err = parse_error(text, catalog)
    assert_names(err, 6, "JavaHome")
    assert "row has 4 cells but the header has 5 columns" in str(err)


def test_unterminated_quote(catalog: Catalog) -> None:
    text = INSTALL + "[host]\nHostName, User, Password, JavaHome\nh1, root, 'secret, \n"
    err = parse_error(text, catalog)
    assert_names(err, 6, "Password")
    assert "unterminated quote" in str(err)
    assert "secret" not in str(err), "password text is never echoed"


def test_text_after_closing_quote(catalog: Catalog) -> None:
    text = INSTALL + "[host]\nHostName, User, Password\nh1, root, 'pw'x\n"
    err = parse_error(text, catalog)
    assert_names(err, 6, "Password")
    assert "text after the closing quote" in str(err)


def test_line_ending_in_escape(catalog: Catalog) -> None:
    text = INSTALL + "[host]\nHostName, User, Password\nh1, root, pw\\\n"
    err = parse_error(text, catalog)
    assert_names(err, 6, "Password")
    assert "escape character" in str(err)


def test_unterminated_quote_in_header(catalog: Catalog) -> None:
    err = parse_error(INSTALL + "[host]\nHostName, 'User\nh1, root\n", catalog)
    assert_names(err, 5, "header")


# --- host fields ----------------------------------------------------------------------


@pytest.mark.parametrize("port", ["ssh", "0", "65536", "-1", "22.0", "+22"])
def test_bad_port(port: str, catalog: Catalog) -> None:
    text = INSTALL + f"[host]\nHostName, SshPort, User\nh1, 22, root\nh2, {port}, root\n"
    err = parse_error(text, catalog)
    assert_names(err, 7, "SshPort")
    assert f"'{port}' is not a port number (1-65535)" in str(err)


def test_port_bounds_accepted(catalog: Catalog) -> None:
    text = INSTALL + "[host]\nHostName, SshPort, User\nh1, 1, root\nh2, 65535, root\n"
    assert [h.port for h in parse(text, catalog).hosts] == [1, 65535]


def test_empty_host_name(catalog: Catalog) -> None:
    err = parse_error(INSTALL + "[host]\nHostName, SshPort, User\n, 22, root\n", catalog)
    assert_names(err, 6, "HostName")
    assert "HostName is empty" in str(err)


@pytest.mark.parametrize("name", ["bad host", "-oProxyCommand=x", "h1;rm"])
def test_invalid_host_name(name: str, catalog: Catalog) -> None:
    err = parse_error(INSTALL + f"[host]\nHostName, User\n'{name}', root\n", catalog)
    assert_names(err, 6, "HostName")
    assert "is not a host name or address" in str(err)


def test_ipv6_and_dotted_names_accepted(catalog: Catalog) -> None:
    text = INSTALL + "[host]\nHostName, User\nfe80::1%eth0, root\nscm-1.example.com, root\n"
    assert parse(text, catalog).host_names() == ("fe80::1%eth0", "scm-1.example.com")


def test_empty_user(catalog: Catalog) -> None:
    err = parse_error(INSTALL + "[host]\nHostName, SshPort, User\nh1, 22,\n", catalog)
    assert_names(err, 6, "User")
    assert "User is empty" in str(err)


@pytest.mark.parametrize("user", ["ro ot", "-root", "a:b"])
def test_invalid_user(user: str, catalog: Catalog) -> None:
    err = parse_error(INSTALL + f"[host]\nHostName, User\nh1, '{user}'\n", catalog)
    assert_names(err, 6, "User")


def test_invalid_install_user(catalog: Catalog) -> None:
    err = parse_error("[installconfig]\nInstallPath, InstallUser\n/opt, 'a b'\n" + HOSTS, catalog)
    assert_names(err, 3, "InstallUser")


def test_root_cannot_be_the_install_user(catalog: Catalog) -> None:
    # the services and their scripts run as the install user: as root, any file of the
    # install would be code run as root (an SSH login as root is fine)
    err = parse_error("[installconfig]\nInstallPath, InstallUser\n/opt, root\n" + HOSTS, catalog)
    assert_names(err, 3, "InstallUser")
    assert "'root' cannot be the install user" in str(err)


def test_duplicate_host(catalog: Catalog) -> None:
    text = INSTALL + "[host]\nHostName, User\nh1, root\nh2, root\nH1, admin\n"
    err = parse_error(text, catalog)
    assert_names(err, 8, "HostName")
    assert "duplicate host 'H1' (first at line 6)" in str(err)


@pytest.mark.parametrize("cell", ["env:", "env:1X", "env:A-B"])
def test_bad_environment_password(cell: str, catalog: Catalog) -> None:
    err = parse_error(INSTALL + f"[host]\nHostName, User, Password\nh1, root, {cell}\n", catalog)
    assert_names(err, 6, "Password")
    assert "is not an environment variable name" in str(err)


def test_relative_java_home(catalog: Catalog) -> None:
    err = parse_error(INSTALL + "[host]\nHostName, User, JavaHome\nh1, root, jdk8\n", catalog)
    assert_names(err, 6, "JavaHome")
    assert "'jdk8' is not an absolute path" in str(err)


def test_relative_install_path(catalog: Catalog) -> None:
    err = parse_error("[installconfig]\nInstallPath\nopt/scm\n" + HOSTS, catalog)
    assert_names(err, 3, "InstallPath")
    assert "is not an absolute path" in str(err)


# --- [config] -------------------------------------------------------------------------


def test_unknown_service_in_config(catalog: Catalog) -> None:
    err = parse_error(INSTALL + HOSTS + "[config]\n# c\nservice=gateway,cotnent-server\n", catalog)
    assert_names(err, 9, "service")
    assert "unknown service(s) cotnent-server" in str(err)
    assert "content-server" in str(err), "the valid names are listed"


def test_config_line_without_equals(catalog: Catalog) -> None:
    err = parse_error(INSTALL + HOSTS + "[config]\nservice=gateway\nbackupPath /bk\n", catalog)
    assert_names(err, 9)
    assert "this line has no '='" in str(err)


def test_config_written_as_table(catalog: Catalog) -> None:
    err = parse_error(INSTALL + HOSTS + "[config]\nservice, backupPath\ngateway, /bk\n", catalog)
    assert_names(err, 8)


def test_duplicate_config_key(catalog: Catalog) -> None:
    err = parse_error(INSTALL + HOSTS + "[config]\nbackupPath=/a\nBACKUPPATH=/b\n", catalog)
    assert_names(err, 9, "BACKUPPATH")
    assert "duplicate key (first at line 8)" in str(err)


def test_empty_config_key(catalog: Catalog) -> None:
    err = parse_error(INSTALL + HOSTS + "[config]\n=/a\n", catalog)
    assert_names(err, 8)
    assert "empty key" in str(err)


def test_unknown_config_key_is_accepted_with_a_warning(catalog: Catalog) -> None:
    config = parse(INSTALL + HOSTS + "[config]\nbackupPth=/bk\n", catalog)
    assert config.backup_path == DEFAULT_BACKUP_PATH
    assert config.warnings == (f"{CFG}:8: unknown key 'backupPth' in [config] ignored",)


@pytest.mark.parametrize(
    ("value", "message"),
    [("backup", "is not an absolute path"), ("/srv/../etc", "must not contain '..'")],
)
def test_bad_directory(value: str, message: str, catalog: Catalog) -> None:
    err = parse_error(INSTALL + HOSTS + f"[config]\nbackupPath={value}\n", catalog)
    assert_names(err, 8, "backupPath")
    assert message in str(err)


@pytest.mark.parametrize("value", ["/opt/sequoiacm", "/opt/sequoiacm/tools/bk"])
def test_directory_inside_install_path(value: str, catalog: Catalog) -> None:
    err = parse_error(INSTALL + HOSTS + f"[config]\nupgradePackPath={value}\n", catalog)
    assert_names(err, 8, "upgradePackPath")
    assert "must not lie inside InstallPath /opt/sequoiacm" in str(err)


def test_default_directory_inside_install_path(catalog: Catalog) -> None:
    text = "[installconfig]\nInstallPath\n/opt/backup\n" + HOSTS
    err = parse_error(text, catalog)
    assert_names(err, None, "backupPath")
    assert "'/opt/backup/sequoiacm' must not lie inside" in str(err)


def test_unterminated_quote_in_config_value(catalog: Catalog) -> None:
    err = parse_error(INSTALL + HOSTS + "[config]\nbackupPath='/bk\n", catalog)
    assert_names(err, 8, "backupPath")
    assert "unterminated quote" in str(err)


def test_text_after_quoted_config_value(catalog: Catalog) -> None:
    err = parse_error(INSTALL + HOSTS + "[config]\nbackupPath='/bk', '/x'\n", catalog)
    assert_names(err, 8, "backupPath")


@pytest.mark.parametrize("key", ["upgradePackPath", "backupPath"])
@pytest.mark.parametrize("value", ["/usr", "/etc/", "/var//", "/tmp"])
def test_system_directory_refused(key: str, value: str) -> None:
    text = (
        "[installconfig]\nInstallPath, InstallUser\n/opt, scmadmin\n"
        "[host]\nHostName, SshPort, User, Password, JavaHome\nh1, 22, root, ,\n"
        f"[config]\n{key}={value}\n"
    )
    with pytest.raises(ConfigError) as info:
        parse_config(text, "u.cfg", load_catalog())
    assert "system directory" in str(info.value)
    assert f"u.cfg:8, field {key}" in str(info.value)


# --- [config] hooks -------------------------------------------------------------------


def test_no_hooks_by_default(catalog: Catalog) -> None:
    hooks = parse(INSTALL + HOSTS, catalog).hooks
    assert hooks == Hooks()
    assert hooks.timeout == 300
    assert not hooks.configured


def test_hook_keys_are_split_like_a_shell(catalog: Catalog) -> None:
    text = (
        INSTALL
        + HOSTS
        + "[config]\n"
        + "hookPreStop = /usr/local/bin/lb.sh drain --pool 'web front'\n"
        + "hookPostVerify='/opt/my hooks/lb.sh' enable \"a b\"\n"
        + "hookPostRollback=notify-send rolled\\ back\n"
        + "hookTimeout = 45\n"
    )
    config = parse(text, catalog)
    assert config.warnings == ()
    assert config.hooks == Hooks(
        pre_stop=("/usr/local/bin/lb.sh", "drain", "--pool", "web front"),
        post_verify=("/opt/my hooks/lb.sh", "enable", "a b"),
        post_rollback=("notify-send", "rolled back"),
        timeout=45,
    )


def test_hook_keys_ignore_case(catalog: Catalog) -> None:
    text = INSTALL + HOSTS + "[CONFIG]\nHOOKPRESTOP=/bin/a\nhookpostverify=/bin/b\nHookTimeOut=1\n"
    hooks = parse(text, catalog).hooks
    assert (hooks.pre_stop, hooks.post_verify, hooks.timeout) == (("/bin/a",), ("/bin/b",), 1)


@pytest.mark.parametrize("value", ["", "   "])
def test_an_empty_hook_means_none(value: str, catalog: Catalog) -> None:
    text = INSTALL + HOSTS + f"[config]\nhookPreStop={value}\nhookTimeout={value}\n"
    assert parse(text, catalog).hooks == Hooks()


def test_hook_timeout_bounds_accepted(catalog: Catalog) -> None:
    for value in (1, 86400):
        config = parse(INSTALL + HOSTS + f"[config]\nhookTimeout={value}\n", catalog)
        assert config.hooks.timeout == value


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("hookPreStop", "/bin/lb.sh 'web", "no closing quotation"),
        ("hookPostVerify", '/bin/lb.sh "web', "no closing quotation"),
        ("hookPostRollback", "/bin/lb.sh web\\", "no escaped character"),
        ("HOOKPRESTOP", "'' drain", "names no program"),
    ],
)
def test_bad_hook_command(key: str, value: str, problem: str, catalog: Catalog) -> None:
    err = parse_error(INSTALL + HOSTS + f"[config]\nservice=gateway\n{key}={value}\n", catalog)
    assert_names(err, 9, key)
    assert problem in str(err)


@pytest.mark.parametrize("value", ["0", "86401", "-5", "5s", "1.5", "ten", "999999999999"])
def test_bad_hook_timeout(value: str, catalog: Catalog) -> None:
    err = parse_error(INSTALL + HOSTS + f"[config]\nhookTimeout={value}\n", catalog)
    assert_names(err, 8, "hookTimeout")
    assert f"'{value}' is not a whole number of seconds (1-86400)" in str(err)


def test_duplicate_hook_key(catalog: Catalog) -> None:
    err = parse_error(INSTALL + HOSTS + "[config]\nhookPreStop=/a\nHookPreStop=/b\n", catalog)
    assert_names(err, 9, "HookPreStop")
