"""Process config (SPEC §5.2): errors carry file, line and a fix; env overrides."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from gateway.config import ConfigError, load


def write(tmp_path, text: str):
    path = tmp_path / "gateway.toml"
    path.write_text(textwrap.dedent(text))
    return path


def problems(path, env=None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(str(path), env=env or {})
    return info.value.problems


def test_embedded_default_needs_no_file():
    settings = load(None, env={})
    assert settings.lmtp.listen == "127.0.0.1:8024"
    assert settings.http.listen == "127.0.0.1:9024"
    assert settings.storage.url == "sqlite:///./mailgate.db"


def test_contract_keys_of_spec_5_2_are_accepted(tmp_path):
    path = write(tmp_path, """
        [gateway]
        server_name = "gw1"
        message_id_domain = "gw1.mailgate"
        [storage]
        url = "sqlite:///var/lib/mailgate/mailgate.db"
        [lmtp]
        listen = "127.0.0.1:8024"
        max_message_size = 36700160
        [smtp]
        enabled = false
        listen = "127.0.0.1:8025"
        [http]
        listen = "127.0.0.1:9024"
        admin_token = "change-me"
        [matching]
        mode = "off"
        hide_plus_in_from = false
        [outbound]
        enabled = true
        unmonitored_address = "no-reply@example.com"
        [outbound.default_gateway]
        host = "127.0.0.1"
        port = 25
        tls = "none"
        username = ""
        password = ""
        [[outbound.dkim]]
        domain = "example.com"
        selector = "mg1"
        key_file = "/etc/mailgate/dkim/example.com.mg1.pem"
        """)
    settings = load(str(path), env={})
    assert settings.gateway.server_name == "gw1"
    assert settings.outbound.dkim[0].selector == "mg1"
    assert settings.outbound.default_gateway.host == "127.0.0.1"


def test_unknown_key_names_file_line_and_suggestion(tmp_path):
    path = write(tmp_path, """
        [lmtp]
        listen = "127.0.0.1:8024"
        max_mesage_size = 10
        """)
    [problem] = problems(path)
    assert problem.startswith(f"{path}:4: unknown key [lmtp] max_mesage_size")
    assert "did you mean 'max_message_size'?" in problem


def test_unknown_section_is_reported(tmp_path):
    path = write(tmp_path, """
        [lmpt]
        listen = "x"
        """)
    [problem] = problems(path)
    assert f"{path}:2: unknown section [lmpt]" in problem and "'lmtp'" in problem


def test_wrong_type_says_what_to_write(tmp_path):
    path = write(tmp_path, """
        [lmtp]
        max_message_size = "35MB"
        """)
    [problem] = problems(path)
    assert problem.startswith(f"{path}:3:")
    assert "write an integer" in problem


def test_every_problem_is_listed_not_just_the_first(tmp_path):
    path = write(tmp_path, """
        [matching]
        mode = "sometimes"
        [http]
        listen = "localhost"
        [lmtp]
        max_recipients = 0
        """)
    found = problems(path)
    assert len(found) == 3
    assert any(":3:" in p and "'off', 'mixed', 'plus_only'" in p for p in found)
    assert any(":5:" in p and "host:port" in p for p in found)
    assert any(":7:" in p and "greater than 0" in p for p in found)


def test_toml_syntax_error_names_the_file(tmp_path):
    path = write(tmp_path, "[lmtp\nlisten = 1\n")
    [problem] = problems(path)
    assert problem.startswith(f"{path}: TOML syntax error")


def test_env_overrides_file_values(tmp_path):
    path = write(tmp_path, """
        [http]
        admin_token = "from-file"
        [lmtp]
        max_message_size = 1000
        """)
    settings = load(str(path), env={"MAILGATE_HTTP_ADMIN_TOKEN": "from-env",
                                    "MAILGATE_LMTP_MAX_MESSAGE_SIZE": "2000",
                                    "MAILGATE_SMTP_ENABLED": "false",
                                    "MAILGATE_OUTBOUND_DEFAULT_GATEWAY_PASSWORD": "s3cret"})
    assert settings.http.admin_token == "from-env"
    assert settings.lmtp.max_message_size == 2000
    assert settings.smtp.enabled is False
    assert settings.outbound.default_gateway.password == "s3cret"


def test_unknown_env_variable_is_an_error_with_suggestion():
    with pytest.raises(ConfigError) as info:
        load(None, env={"MAILGATE_HTTP_ADMIN_TOKN": "x"})
    assert "MAILGATE_HTTP_ADMIN_TOKEN" in info.value.problems[0]


def test_bad_env_value_is_reported(tmp_path):
    with pytest.raises(ConfigError) as info:
        load(None, env={"MAILGATE_LMTP_MAX_RECIPIENTS": "many"})
    assert "max_recipients" in info.value.problems[0]


def test_secret_comes_from_a_file(tmp_path):
    secret = tmp_path / "token"
    secret.write_text("file-secret\n")
    path = write(tmp_path, f"""
        [http]
        admin_token_file = "{secret}"
        """)
    assert load(str(path), env={}).http.admin_token == "file-secret"


def test_unreadable_secret_file_is_reported_with_line(tmp_path):
    path = write(tmp_path, """
        [http]
        admin_token_file = "/nonexistent/token"
        """)
    [problem] = problems(path)
    assert problem.startswith(f"{path}:3:") and "cannot read /nonexistent/token" in problem


def test_r_o1_outbound_enabled_needs_a_default_gateway(tmp_path):
    path = write(tmp_path, """
        [outbound]
        enabled = true
        """)
    [problem] = problems(path)
    assert "R-O1" in problem


def test_bootstrap_connector_addresses_are_checked(tmp_path):
    path = write(tmp_path, """
        [[directory.connectors]]
        name = "support"
        primary_address = "not-an-address"
        """)
    [problem] = problems(path)
    assert "'not-an-address' is not an address" in problem


def test_mailgate_check_exits_non_zero_and_prints_each_problem(tmp_path):
    path = write(tmp_path, """
        [lmtp]
        lisen = "127.0.0.1:1"
        """)
    run = subprocess.run([sys.executable, "-m", "gateway", "check", "--config", str(path)],
                         capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert run.returncode == 2
    assert f"{path}:3: unknown key [lmtp] lisen" in run.stderr
    good = write(tmp_path, "[lmtp]\nlisten = \"127.0.0.1:1\"\n")
    run = subprocess.run([sys.executable, "-m", "gateway", "check", "--config", str(good)],
                         capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr


def test_shipped_example_config_is_valid():
    from pathlib import Path
    example = Path(__file__).resolve().parents[2] / "conf" / "gateway.toml"
    settings = load(str(example), env={})
    assert settings.directory.connectors[0].primary_address == "support@helpdesk.example.com"


def test_r_b3_loop_budgets_are_on_by_default_and_zero_turns_one_off(tmp_path):
    defaults = load(None, env={})
    assert (defaults.loops.sender_budget, defaults.loops.sender_window_minutes) == (20, 10)
    assert (defaults.loops.reopen_budget, defaults.loops.reopen_window_hours) == (5, 24)
    path = write(tmp_path, """
        [loops]
        sender_budget = 0
        """)
    settings = load(str(path), env={"MAILGATE_LOOPS_REOPEN_BUDGET": "2"})
    assert (settings.loops.sender_budget, settings.loops.reopen_budget) == (0, 2)


def test_r_b3_a_negative_budget_or_an_empty_window_is_reported_with_its_line(tmp_path):
    path = write(tmp_path, """
        [loops]
        sender_budget = -1
        sender_window_minutes = 0
        """)
    found = problems(path)
    assert f"{path}:3: [loops] sender_budget = -1: must be 0 (no limit) or more" in found
    assert f"{path}:4: [loops] sender_window_minutes = 0: must be greater than 0" in found


def test_r_b4_an_admins_own_class_rules_are_checked_with_the_config(tmp_path):
    rules = tmp_path / "classes.toml"
    rules.write_text('version = 2\n[[rule]]\nname = "vendor-ndr"\nclass = "bounce"\n'
                     'header = "x-vendor-ndr"\n')
    path = write(tmp_path, f"""
        [autogen]
        classes_file = "{rules}"
        """)
    assert load(str(path), env={}).autogen.classes_file == str(rules)
    rules.write_text('version = 2\n[[rule]]\nname = "vendor-ndr"\nclass = "bounced"\n'
                     'header = "x-vendor-ndr"\n')
    [problem] = problems(path)
    assert problem.startswith(f"{path}:3: [autogen] classes_file: {rules}: rule 1")
    assert "class = 'bounced': use one of auto_reply, bounce, list, notification" in problem
    rules.unlink()
    assert "cannot read it" in problems(path)[0]


def test_r_b2_sender_binding_settings_load_from_file_and_env(tmp_path):
    path = write(tmp_path, """
        [matching]
        ref_requires_participant = true
        trusted_authserv_ids = ["mx1.example.com", "mx2.example.com"]
        """)
    settings = load(str(path), env={})
    assert settings.matching.ref_requires_participant is True
    assert settings.matching.trusted_authserv_ids == ("mx1.example.com", "mx2.example.com")
    path = write(tmp_path, """
        [matching]
        trusted_authserv_ids = "mx1.example.com"
        """)
    assert "trusted_authserv_ids" in problems(path)[0]


def test_r_b1_signing_needs_a_secret_of_sixteen_bytes_from_a_file_or_the_environment(tmp_path):
    path = write(tmp_path, """
        [matching]
        sign_tokens = true
        """)
    [problem] = problems(path)
    assert problem.startswith(f"{path}:3: R-B1: [matching] sign_tokens = true needs a "
                              "token_secret of at least 16 bytes")
    secret = tmp_path / "token-secret"
    secret.write_text("0123456789abcdef0123\n")
    path = write(tmp_path, f"""
        [matching]
        sign_tokens = true
        token_secret_file = "{secret}"
        """)
    assert load(str(path), env={}).matching.token_secret == "0123456789abcdef0123"
    path = write(tmp_path, """
        [matching]
        sign_tokens = true
        """)
    settings = load(str(path), env={"MAILGATE_MATCHING_TOKEN_SECRET": "x" * 16})
    assert settings.matching.token_secret == "x" * 16
