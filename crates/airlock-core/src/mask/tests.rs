use std::borrow::Cow;

use proptest::prelude::*;
use serde_json::json;

use super::*;

const HELD: &str = "Pg-Adm1n-P4ss!";

fn engine(toml_text: &str, held: &[&str]) -> MaskEngine {
    #[derive(serde::Deserialize)]
    struct Wrap {
        #[serde(default)]
        masking: MaskConfig,
    }
    let w: Wrap = toml::from_str(toml_text).unwrap();
    MaskEngine::new(
        &w.masking,
        held.iter().map(|s| s.to_string()).collect(),
        [42; 32],
    )
    .unwrap()
}

fn who(subject: &str, groups: &[&str]) -> Identity {
    Identity {
        subject: subject.into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        issuer: "test".into(),
    }
}

fn default_masker() -> Masker {
    engine("", &[HELD]).masker("db", &who("agent", &["agents"]))
}

fn mask(s: &str) -> String {
    let mut counts = MaskCounts::new();
    default_masker().mask_str(None, s, &mut counts).into_owned()
}

fn mask_counts(s: &str) -> (String, MaskCounts) {
    let mut counts = MaskCounts::new();
    let out = default_masker().mask_str(None, s, &mut counts).into_owned();
    (out, counts)
}

/// Asserts `input` masks to `expected` and that each of `counted` was counted.
fn check(input: &str, expected: &str) {
    assert_eq!(mask(input), expected, "input: {input:?}");
}

fn untouched(input: &str) {
    assert_eq!(mask(input), input, "must not be masked: {input:?}");
}

#[test]
fn email_true_positives_and_near_misses() {
    check("mail bob.smith+tag@example.co.uk now", "mail <EMAIL> now");
    check(
        "<a href=\"mailto:jane_doe@corp.example.com\">",
        "<a href=\"mailto:<EMAIL>\">",
    );
    check(
        "\x1b[1;32mjohn@example.com\x1b[0m",
        "\x1b[1;32m<EMAIL>\x1b[0m",
    );
    untouched("user@localhost");
    untouched("prompt alice@host:~$ ls");
    untouched("an @ sign and foo@ and @bar.com");
    untouched("version@1.2.3");
}

/// Addresses with letters outside ASCII (RFC 6531) are addresses too:
/// accented local parts, internationalised domains and TLDs. CJK text run
/// into an address stays outside it, and near misses stay near misses.
#[test]
fn email_addresses_with_letters_outside_ascii() {
    check("from andré@example.com.", "from <EMAIL>.");
    check("josé.garcia@example.com", "<EMAIL>");
    check("info@müller.de", "<EMAIL>");
    check("иван@почта.рф", "<EMAIL>");
    check("a@b.xn--p1ai", "<EMAIL>");
    check(
        "お問い合わせはbob@example.comまで",
        "お問い合わせは<EMAIL>まで",
    );
    untouched("café@localhost");
    untouched("résumé @ example.com");
    untouched("größe@2.5");
}

/// An `@` percent-encoded (`%40`), as in a URL or a form body, or written
/// as an HTML character reference (`&#64;`, `&#x40;`) is an `@`;
/// a `%40` that joins no address leaves its digits to the other detectors.
#[test]
fn email_addresses_with_a_percent_encoded_at_sign() {
    check(
        "GET /reset?email=bob%40example.com&x=1",
        "GET /reset?email=<EMAIL>&x=1",
    );
    check("to=alice.smith%40corp.example.co.uk", "to=<EMAIL>");
    check("<p>bob&#64;example.com</p>", "<p><EMAIL></p>");
    check("mail: carol&#x40;example.org.", "mail: <EMAIL>.");
    untouched("discount 100%40 off");
    untouched("a%40b");
    check("%40 then 4111111111111111", "%40 then <CARD>");
}

#[test]
fn card_numbers_need_luhn_and_a_card_prefix() {
    check("card 4111 1111 1111 1111 exp", "card <CARD> exp");
    check("card 4111-1111-1111-1111.", "card <CARD>.");
    check("4111111111111111", "<CARD>");
    check("amex 3782 822463 10005", "amex <CARD>");
    check("17,5555555555554444,ok", "17,<CARD>,ok");
    // Inside parentheses and brackets: a row value's text, a SQL call.
    check("(4111111111111111,x)", "(<CARD>,x)");
    check("ROW(4111111111111111::int8)", "ROW(<CARD>::int8)");
    check("[4111111111111111]", "[<CARD>]");
    check("f(123-45-6789)", "f(<SSN>)");
    // After a line break or tab written as an escape (COPY's text format,
    // JSON in a text column, doubled in a jsonb COPY), as after the byte.
    check(
        r"Card on file:\n4111 1111 1111 1111",
        r"Card on file:\n<CARD>",
    );
    check(r"SSN:\t123-45-6789", r"SSN:\t<SSN>");
    check(
        r#"{"note":"Card:\\n4111111111111111"}"#,
        r#"{"note":"Card:\\n<CARD>"}"#,
    );
    // A letter that escapes nothing still joins the number.
    untouched(r"ref:q4111111111111111");
    // A card number kept as a float or a decimal: float8's text, JSON
    // numbers, numeric arithmetic. A real fraction, a number that is not a
    // card, and a float too small or too large for one stay.
    check("4.111111111111111e+15", "<CARD>");
    check("{4.111111111111111e+15,1}", "{<CARD>,1}");
    check(r#"{"card": 4111111111111111.0}"#, r#"{"card": <CARD>}"#);
    check("total 5555555555554444.0000 due", "total <CARD> due");
    check("4.1111111111106e+15", "<CARD>");
    untouched("4111111111111111.5");
    untouched("4.111111111111112e+15");
    untouched("3.14e+15 and 4.1e+3 and 4.111111111111111e+25");
    untouched("order 4111111111111112.0 shipped");
    // A 16-digit order id that fails Luhn.
    untouched("order 4111111111111112 shipped");
    // Luhn-valid but not a card prefix (starts with 1) or part of a longer number.
    untouched("id 1234567812345670");
    untouched("ts 41111111111111110000");
    untouched("pi 3.4111111111111111");
}

#[test]
fn ssn_valid_ranges_only() {
    check("ssn 123-45-6789.", "ssn <SSN>.");
    check("ssn 536 22 1234", "ssn <SSN>");
    untouched("ssn 000-12-3456");
    untouched("ssn 666-12-3456");
    untouched("ssn 912-12-3456");
    untouched("ssn 123-00-4567");
    untouched("ssn 123-45-0000");
    untouched("date 2024-01-15 part 123-45-67890");
}

#[test]
fn phone_numbers_e164_and_national() {
    check("call +1 (415) 555-2671 now", "call <PHONE> now");
    check("call +14155552671", "call <PHONE>");
    check("+44 20 7946 0958", "<PHONE>");
    check("tel: (415) 555-2671", "tel: <PHONE>");
    check("tel: 415-555-2671", "tel: <PHONE>");
    check("tel: 415.555.2671", "tel: <PHONE>");
    check("tel: 1-415-555-2671", "tel: <PHONE>");
    check("Tel. 030 1234 5678", "Tel. <PHONE>");
    check("06 12 34 56 78", "<PHONE>");
    // Area and exchange codes cannot start with 0 or 1; dates and times are not phones.
    untouched("tel: 115-555-2671");
    untouched("on 2024-01-15 at 12:30:45");
    untouched("ratio 555.1234");
    untouched("+12");
}

#[test]
fn iban_mod97_and_country_length() {
    check(
        "pay to DE89 3704 0044 0532 0130 00 today",
        "pay to <IBAN> today",
    );
    check("GB82WEST12345698765432", "<IBAN>");
    // Bad checksum, wrong length, unknown country.
    untouched("DE89 3704 0044 0532 0130 01");
    untouched("DE89370400440532013");
    untouched("ZZ89370400440532013000");
}

#[test]
fn ipv4_needs_four_octets_and_is_not_a_version() {
    check("from 10.0.0.1:5432", "from <IPV4>:5432");
    check("ip=192.168.1.254/24", "ip=<IPV4>/24");
    check("range 10.0.0.1-10.0.0.9", "range <IPV4>-<IPV4>");
    check("peer (10.0.0.1)", "peer (<IPV4>)");
    untouched("release 1.2.3.4-beta");
    untouched("version 10.0.19045");
    untouched("Version 1.2.3.4");
    untouched("v1.2.3.4");
    untouched("256.1.1.1 and 1.2.3.4.5 and 01.2.3.4");
    untouched("pi is 3.14159, e 2.718");
}

#[test]
fn ipv6_full_and_compressed() {
    check("addr 2001:db8::8a2e:370:7334 up", "addr <IPV6> up");
    check("lo ::1 and [fe80::1]:22", "lo <IPV6> and [<IPV6>]:22");
    check("2001:0db8:85a3:0000:0000:8a2e:0370:7334", "<IPV6>");
    untouched("time 12:30:45 and std::vec::Vec and a::b");
    untouched("mac 00:1a:2b:3c:4d:5e");
    untouched("{\"a\":\"b\",\"c\":12}");
}

#[test]
fn jwt_three_segments() {
    let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U";
    check(
        &format!("Authorization: Bearer {jwt}"),
        "Authorization: Bearer <JWT>",
    );
    untouched("eyJhbGciOiJIUzI1NiJ9 alone is a header");
}

#[test]
fn cloud_and_saas_tokens() {
    check(
        "AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE",
        "AWS_ACCESS_KEY_ID=<AWS_ACCESS_KEY>",
    );
    check(
        "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "aws_secret_access_key = <AWS_SECRET_KEY>",
    );
    check(
        "bob,AKIAIOSFODNN7EXAMPLE,wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n",
        "bob,<AWS_ACCESS_KEY>,<AWS_SECRET_KEY>\n",
    );
    check(
        "token ghp_1234567890abcdefghijklmnopqrstuvwxyz done",
        "token <GITHUB_TOKEN> done",
    );
    check(
        "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz",
        "<GITHUB_TOKEN>",
    );
    check(
        "slack xoxb-123456789012-abcdefABCDEF",
        "slack <SLACK_TOKEN>",
    );
    check(
        "https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX",
        "https://hooks.slack.com/services/<SLACK_TOKEN>",
    );
    check(
        "stripe sk_live_4eC39HqLyjWDarjtT1zdp7dc",
        "stripe <STRIPE_KEY>",
    );
    check(
        "key AIzaSyA-1234567890abcdefghijklmnopqrstu x",
        "key <GCP_API_KEY> x",
    );
    // Too short, or inside a word: not tokens.
    untouched("AKIA1234 and MAKIAIOSFODNN7EXAMPLE and ghp_short and sk_live_x");
}

#[test]
fn private_key_blocks() {
    let pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA75\nabcd==\n-----END RSA PRIVATE KEY-----";
    check(&format!("key:\n{pem}\nrest"), "key:\n<PRIVATE_KEY>\nrest");
    let gcp = r#"{"type": "service_account", "private_key": "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBg\n-----END PRIVATE KEY-----\n", "x": 1}"#;
    check(
        gcp,
        r#"{"type": "service_account", "private_key": "<GCP_PRIVATE_KEY>", "x": 1}"#,
    );
    // A truncated block is still masked; public keys and certificates are not secrets.
    check(
        "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk\n",
        "<PRIVATE_KEY>\n",
    );
    untouched("-----BEGIN PUBLIC KEY-----\nMIIBIjANBg\n-----END PUBLIC KEY-----");
}

#[test]
fn secrets_after_key_names() {
    check("password=hunter2 user=bob", "password=<SECRET> user=bob");
    check("DB_PASSWORD: 'c0rrect horse'", "DB_PASSWORD: '<SECRET>'");
    check(
        r#"{"apiKey": "Zr8qLmT2vX9wKp4N"}"#,
        r#"{"apiKey": "<SECRET>"}"#,
    );
    check(
        r#"{\"client_secret\":\"Zr8qLmT2vX9wKp4N\"}"#,
        r#"{\"client_secret\":\"<SECRET>\"}"#,
    );
    check(
        "GET /cb?code=1&access_token=Zr8qLmT2vX9wKp4N&x=1",
        "GET /cb?code=1&access_token=<SECRET>&x=1",
    );
    check(
        "Authorization: Basic dXNlcjpwYXNzd29yZA==",
        "Authorization: Basic <SECRET>",
    );
    check(
        "mysql --password hunter22 db",
        "mysql --password <SECRET> db",
    );
    // Placeholders, low-entropy tokens, counts and paths are not secrets.
    untouched("password: ********");
    untouched("password=${DB_PASSWORD}");
    untouched("secret: true");
    untouched("max_tokens: 4096, tokens=12");
    untouched("token=aaaaaaaaaaaa");
    untouched("PWD=/home/bob OLDPWD=/tmp");
    untouched("enter your password:");
}

#[test]
fn url_userinfo_password() {
    check(
        "postgres://app:s3cr3t-pw@db.internal:5432/app",
        "postgres://app:<URL_PASSWORD>@db.internal:5432/app",
    );
    untouched("https://example.com:8443/path");
}

#[test]
fn custom_regex_and_literals() {
    let e = engine(
        r#"
[masking]
literals = ["Project Nightingale"]
[[masking.custom]]
name = "employee_id"
regex = "EMP-[0-9]{6}"
"#,
        &[],
    );
    let m = e.masker("t", &who("a", &[]));
    let mut c = MaskCounts::new();
    let out = m.mask_str(None, "EMP-123456 on Project Nightingale, EMP-12", &mut c);
    assert_eq!(out, "<EMPLOYEE_ID> on <LITERAL>, EMP-12");
    assert_eq!(c["employee_id"], 1);
    assert_eq!(c["literal"], 1);
}

#[test]
fn held_secret_masked_in_every_profile_even_with_all_detectors_off() {
    let e = engine(
        r#"
[masking]
literals = ["Nightingale"]
[[masking.profiles]]
name = "nothing"
groups = ["auditors"]
detectors = []
literals = false
fields = []
"#,
        &[HELD],
    );
    let text = format!("pw {HELD} mail bob@example.com Nightingale");
    for (subject, groups) in [("aud", vec!["auditors"]), ("agent", vec!["agents"])] {
        let m = e.masker("prod", &who(subject, &groups));
        let mut c = MaskCounts::new();
        let out = m.mask_str(None, &text, &mut c).into_owned();
        assert!(!out.contains(HELD), "{}: {out}", m.profile());
        assert_eq!(c["held_secret"], 1);
        let mut doc = json!({ "note": format!("x{HELD}y") });
        m.mask_json(&mut doc, &mut c);
        assert_eq!(doc["note"], "x<SECRET>y");
        let mut s = m.stream();
        let mut o = Vec::new();
        for b in text.as_bytes() {
            s.push(&[*b], &mut o, &mut c);
        }
        s.finish(&mut o, &mut c);
        assert!(!String::from_utf8_lossy(&o).contains(HELD));
    }
    // The profile that turns everything off leaves the rest visible...
    let m = e.masker("prod", &who("aud", &["auditors"]));
    let out = m.mask_str(None, &text, &mut MaskCounts::new()).into_owned();
    assert_eq!(out, "pw <SECRET> mail bob@example.com Nightingale");
    // ...while the default profile masks it.
    let m = e.masker("prod", &who("agent", &["agents"]));
    let out = m.mask_str(None, &text, &mut MaskCounts::new()).into_owned();
    assert_eq!(out, "pw <SECRET> mail <EMAIL> <LITERAL>");
    // URL-encoded and JSON-escaped forms of the credential are masked too.
    let out = m
        .mask_str(
            None,
            "u=Pg-Adm1n-P4ss%21 j=\"Pg-Adm1n-P4ss!\"",
            &mut MaskCounts::new(),
        )
        .into_owned();
    assert_eq!(out, "u=<SECRET> j=\"<SECRET>\"");
}

#[test]
fn a_held_credential_is_masked_in_hex_and_base64_at_any_offset() {
    use base64::Engine as _;
    let e = engine("", &[HELD]);
    let m = e.masker("prod", &who("agent", &["agents"]));
    let mask = |text: &str| m.mask_str(None, text, &mut MaskCounts::new()).into_owned();
    // PostgreSQL's bytea output and encode(…, 'hex').
    let hex = hex::encode(HELD);
    assert_eq!(mask(&format!("\\x{hex}")), "\\x<SECRET>");
    assert!(!mask(&format!("\\x00ff{hex}00")).contains(&hex));
    assert!(!mask(&hex::encode_upper(format!("id:{HELD}"))).contains(&hex::encode_upper(HELD)));
    // Base64 of the credential alone, and inside longer values at each of
    // the three alignments (HTTP Basic: "user:password"): every character
    // whose six bits all come from the credential is replaced, so at most
    // four bits of it stay at each edge.
    for prefix in ["", "a", "ab", "abc", "admin:"] {
        for engine in [
            base64::engine::general_purpose::STANDARD,
            base64::engine::general_purpose::URL_SAFE,
        ] {
            let encoded = engine.encode(format!("{prefix}{HELD}!tail"));
            let out = mask(&format!("Basic {encoded}"));
            let at = out
                .find("<SECRET>")
                .unwrap_or_else(|| panic!("{prefix:?}: {encoded} -> {out}"))
                - "Basic ".len();
            let kept_after = out.len() - (at + "Basic ".len() + "<SECRET>".len());
            let end = encoded.len() - kept_after;
            let (bits_from, bits_to) = (8 * prefix.len(), 8 * (prefix.len() + HELD.len()));
            assert!(
                at <= bits_from.div_ceil(6) && end >= bits_to / 6,
                "{prefix:?}: characters {at}..{end} replaced in {encoded} -> {out}"
            );
            // Nothing of the prefix or the tail beyond the shared characters.
            assert!(
                at + 1 >= bits_from / 6 && end <= bits_to.div_ceil(6) + 1,
                "{out}"
            );
        }
    }
    // Hex and base64 of other text are left alone.
    let other = hex::encode("Pg-Adm1n-other");
    assert_eq!(mask(&other), other);
    let b64 = base64::engine::general_purpose::STANDARD.encode("harmless text here");
    assert_eq!(mask(&b64), b64);
}

#[test]
fn a_held_credential_with_quotes_is_masked_where_they_are_doubled() {
    let quoted = r#"pa"ss'w0rd-held"#;
    let e = engine("", &[quoted]);
    let m = e.masker("prod", &who("agent", &["agents"]));
    let mask = |text: &str| m.mask_str(None, text, &mut MaskCounts::new()).into_owned();
    // As is, and in a CSV field or a composite value ("" for "), and in
    // an SQL literal ('' for ').
    assert_eq!(mask(quoted), "<SECRET>");
    assert_eq!(mask(r#"7,"pa""ss'w0rd-held",x"#), r#"7,"<SECRET>",x"#);
    assert_eq!(mask("'pa\"ss''w0rd-held'"), "'<SECRET>'");
    // The same text with one quote less is not the credential.
    assert_eq!(mask(r#"pa"sw0rd-held"#), r#"pa"sw0rd-held"#);
}

#[test]
fn a_held_credential_is_masked_in_postgresqls_output_escapes_and_other_url_encodings() {
    let held = "a\\b\"c'd/é!x-held";
    let e = engine("", &[held]);
    let m = e.masker("prod", &who("agent", &["agents"]));
    let mask = |text: &str| m.mask_str(None, text, &mut MaskCounts::new()).into_owned();
    for (how, form) in [
        ("COPY text", "a\\\\b\"c'd/é!x-held"),
        ("composite field", "a\\\\b\"\"c'd/é!x-held"),
        ("E'' literal", "a\\\\b\"c''d/é!x-held"),
        ("bytea escape", "a\\\\b\"c'd/\\303\\251!x-held"),
        ("lower-case percent", "a%5cb%22c%27d%2f%c3%a9%21x-held"),
        ("encodeURIComponent", "a%5Cb%22c'd%2F%C3%A9!x-held"),
    ] {
        assert_eq!(mask(&format!("<{form}>")), "<<SECRET>>", "{how}: {form}");
    }
    // One escape too few is another text.
    assert_eq!(mask("a\\b\"\"c''d"), "a\\b\"\"c''d");
}

#[test]
fn profiles_pick_by_group_subject_and_target() {
    let e = engine(
        r#"
[[masking.profiles]]
name = "auditors"
groups = ["auditors"]
targets = ["prod-*"]
detectors = ["card", "aws_secret_key"]
[[masking.profiles]]
name = "bot"
subjects = ["svc-bot"]
detectors = ["*"]
except = ["email"]
"#,
        &[],
    );
    let text = "bob@example.com 4111 1111 1111 1111";
    let run = |target: &str, w: &Identity| {
        let m = e.masker(target, w);
        (
            m.profile().to_string(),
            m.mask_str(None, text, &mut MaskCounts::new()).into_owned(),
        )
    };
    assert_eq!(
        run("prod-db", &who("al", &["auditors"])),
        ("auditors".into(), "bob@example.com <CARD>".into())
    );
    // Same group, other target: the default profile.
    assert_eq!(
        run("staging", &who("al", &["auditors"])),
        ("default".into(), "<EMAIL> <CARD>".into())
    );
    assert_eq!(
        run("staging", &who("svc-bot", &[])),
        ("bot".into(), "bob@example.com <CARD>".into())
    );
}

#[test]
fn replacement_styles() {
    let e = engine(
        r#"
[masking.detectors.card]
style = "partial"
[masking.detectors.email]
style = "pseudonym"
[masking.detectors.ssn]
style = "partial"
keep = 2
token = "X"
"#,
        &[],
    );
    let m = e.masker("t", &who("a", &[]));
    let mut c = MaskCounts::new();
    let out = m.mask_str(None, "4111-1111-1111-1111 123-45-6789", &mut c);
    assert_eq!(out, "****-****-****-1111 ***-**-**89");
    let a = m.mask_str(None, "Bob@Example.com", &mut c).into_owned();
    let b = m.mask_str(None, "x bob@example.com", &mut c).into_owned();
    let other = m.mask_str(None, "alice@example.com", &mut c).into_owned();
    assert!(
        a.starts_with("<EMAIL:") && a.len() == "<EMAIL:12345678>".len(),
        "{a}"
    );
    // Same value (up to case) -> same token, so joins still work; others differ.
    assert_eq!(b, format!("x {a}"));
    assert_ne!(a, other);
    // A different key gives different pseudonyms.
    let e2 = MaskEngine::new(
        &toml::from_str::<MaskConfig>("[detectors.email]\nstyle = \"pseudonym\"").unwrap(),
        vec![],
        [1; 32],
    )
    .unwrap();
    let a2 = e2
        .masker("t", &who("a", &[]))
        .mask_str(None, "Bob@Example.com", &mut c)
        .into_owned();
    assert_ne!(a, a2);
    // Partial never reveals more than half.
    let e3 = engine(
        "[masking.detectors.generic_secret]\nstyle = \"partial\"\nkeep = 10",
        &[],
    );
    let out = e3
        .masker("t", &who("a", &[]))
        .mask_str(None, "password=abcdef", &mut c)
        .into_owned();
    assert_eq!(out, "password=***def");
}

#[test]
fn field_rules_for_columns() {
    let e = engine(
        r#"
[[masking.fields]]
name = "users.email"
style = "partial"
keep = 4
[[masking.fields]]
name = "notes"
token = "NOTE"
"#,
        &[],
    );
    let m = e.masker("t", &who("a", &[]));
    let mut c = MaskCounts::new();
    assert_eq!(
        m.mask_str(Some("users.email"), "ab@cd.io", &mut c),
        "**@*d.io"
    );
    assert_eq!(
        m.mask_str(Some("public.users.email"), "ab@cd.io", &mut c),
        "**@*d.io"
    );
    // Unknown table: the rule still applies (fail closed).
    assert_eq!(m.mask_str(Some("email"), "ab@cd.io", &mut c), "**@*d.io");
    // Another table's email column falls back to the detectors.
    assert_eq!(
        m.mask_str(Some("orders.email"), "ab@cd.io", &mut c),
        "<EMAIL>"
    );
    assert_eq!(m.mask_str(Some("t.notes"), "anything", &mut c), "<NOTE>");
    assert_eq!(c["field:users.email"], 3);
    assert_eq!(c["field:notes"], 1);
    // Case and schema do not matter for the table part.
    assert_eq!(
        m.mask_str(Some("Public.USERS.email"), "ab@cd.io", &mut c),
        "**@*d.io"
    );
    assert_eq!(
        m.mask_str(Some("xusers.email"), "ab@cd.io", &mut c),
        "<EMAIL>",
        "a table whose name merely ends like the rule's is another table"
    );
    // A value known by two names (a result column's table column and the
    // query's alias for it): a rule matching either one applies, and rules
    // apply in configuration order, whichever name they match (the last case).
    for (names, value, masked) in [
        (["public.users.email", "e"], "ab@cd.io", "**@*d.io"),
        (["public.t.x", "notes"], "anything", "<NOTE>"),
        (["public.t.x", "y"], "anything", "anything"),
        (["public.t.notes", "email"], "ab@cd.io", "**@*d.io"),
    ] {
        assert_eq!(m.mask_str_named(&names, value, &mut c), masked, "{names:?}");
    }
    // `table.*` stands for a whole row of the table: the first rule for a
    // column of it (or for a column of any table) covers it.
    for (name, value, masked) in [
        ("users.*", "(1,ab@cd.io)", "(*,**@*d.io)"),
        ("public.users.*", "(1,ab@cd.io)", "(*,**@*d.io)"),
        ("t.*", "(1,x)", "<NOTE>"),
    ] {
        assert_eq!(m.mask_str(Some(name), value, &mut c), masked, "{name}");
    }
    // A value computed from a partially masked column keeps none of it.
    let derived = m.field_plan(&["users.email"]).derived();
    assert_eq!(m.mask_field(&derived, "xxxxxxxxab@c", &mut c), "<REDACTED>");
    assert_eq!(
        m.mask_field(&m.field_plan(&["users.email"]), "ab@cd.io", &mut c),
        "**@*d.io"
    );
    let e3 = engine("[[masking.fields]]\nname = \"users.email\"\n", &[]);
    let m3 = e3.masker("t", &who("a", &[]));
    assert_eq!(m3.mask_str(Some("users.*"), "(1,x)", &mut c), "<REDACTED>");
    assert_eq!(m3.mask_str(Some("orders.*"), "(1,x)", &mut c), "(1,x)");
    // A rule with a schema: the same table with or without the schema
    // matches, the same table name in another schema does not.
    let e2 = engine("[[masking.fields]]\nname = \"public.users.email\"\n", &[]);
    let m2 = e2.masker("t", &who("a", &[]));
    assert_eq!(m2.mask_str(Some("users.email"), "x1", &mut c), "<REDACTED>");
    assert_eq!(
        m2.mask_str(Some("PUBLIC.users.email"), "x1", &mut c),
        "<REDACTED>"
    );
    assert_eq!(m2.mask_str(Some("other.users.email"), "x1", &mut c), "x1");
    // A column named like a secret is masked whole, also behind a long
    // schema and table name, and also when only one of its names says so.
    assert_eq!(
        m.mask_str(Some("users.db_password"), "hunter22", &mut c),
        "<SECRET>"
    );
    let long = format!("tenant_{}.{}.password", "a".repeat(60), "b".repeat(40));
    assert_eq!(m.mask_str(Some(&long), "hunter22", &mut c), "<SECRET>");
    assert_eq!(
        m.mask_str_named(&["public.settings.value", "password"], "hunter22", &mut c),
        "<SECRET>"
    );
    assert_eq!(
        m.mask_str(Some("api_key"), "Zr8qLmT2vX9wKp4N", &mut c),
        "<SECRET>"
    );
    assert_eq!(
        m.mask_str(Some("name"), "Zr8qLmT2vX9wKp4N", &mut c),
        "Zr8qLmT2vX9wKp4N"
    );
}

#[test]
fn json_documents_paths_and_keys() {
    let e = engine(
        r#"
[[masking.fields]]
name = "$.customer.name"
[[masking.fields]]
name = "$.items[*].sku"
[[masking.fields]]
name = "$..ssn_raw"
[[masking.fields]]
name = "dob"
"#,
        &[],
    );
    let m = e.masker("t", &who("a", &[]));
    let mut c = MaskCounts::new();
    let mut doc = json!({
        "customer": { "name": "Bob", "email": "bob@example.com", "dob": "1990-01-02" },
        "items": [ { "sku": 17, "card": 4111111111111111u64 }, { "sku": "A-2" } ],
        "deep": { "x": [ { "ssn_raw": "123456789" } ] },
        "bob@example.com": true,
        "password": "hunter22",
        "name": "not masked"
    });
    m.mask_json(&mut doc, &mut c);
    assert_eq!(
        doc,
        json!({
            "customer": { "name": "<REDACTED>", "email": "<EMAIL>", "dob": "<REDACTED>" },
            "items": [ { "sku": "<REDACTED>", "card": "<CARD>" }, { "sku": "<REDACTED>" } ],
            "deep": { "x": [ { "ssn_raw": "<REDACTED>" } ] },
            "<EMAIL>": true,
            "password": "<SECRET>",
            "name": "not masked"
        })
    );
    assert_eq!(c["field:$.items[*].sku"], 2);
    assert_eq!(c["email"], 2);
}

#[test]
fn kubernetes_secrets() {
    let m = default_masker();
    let mut c = MaskCounts::new();
    let last = r#"{"apiVersion":"v1","kind":"Secret","data":{"pw":"aHVudGVyMg=="}}"#;
    let mut doc = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": { "name": "db", "annotations": { "kubectl.kubernetes.io/last-applied-configuration": last } },
        "data": { "pw": "aHVudGVyMg==", "empty": "" },
        "stringData": { "user": "admin" }
    });
    m.mask_json(&mut doc, &mut c);
    use base64::Engine as _;
    let token_b64 = base64::engine::general_purpose::STANDARD.encode("<KUBE_SECRET>");
    assert_eq!(doc["data"]["pw"], token_b64.as_str());
    assert_eq!(doc["data"]["empty"], "");
    assert_eq!(doc["stringData"]["user"], "<KUBE_SECRET>");
    assert_eq!(doc["metadata"]["name"], "db");
    let ann = doc["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
        .as_str()
        .unwrap();
    assert!(!ann.contains("aHVudGVyMg"), "{ann}");
    assert_eq!(c["kube_secret"], 3);

    let mut list = json!({ "kind": "SecretList", "items": [ { "metadata": {"name": "a"}, "data": { "k": "czNjcjN0" } } ] });
    m.mask_json(&mut list, &mut c);
    assert_eq!(list["items"][0]["data"]["k"], token_b64.as_str());
    // A ConfigMap's data is not a secret.
    let mut cm = json!({ "kind": "ConfigMap", "data": { "k": "czNjcjN0" } });
    m.mask_json(&mut cm, &mut c);
    assert_eq!(cm["data"]["k"], "czNjcjN0");
}

#[test]
fn bad_config_names_the_rule() {
    let err = |toml_text: &str| {
        let cfg: MaskConfig = toml::from_str(toml_text).unwrap();
        MaskEngine::new(&cfg, vec![], [0; 32])
            .unwrap_err()
            .to_string()
    };
    let e = err("[[custom]]\nname = \"emp\"\nregex = \"EMP-[0-9\"");
    assert!(
        e.contains("custom rule \"emp\"") && e.contains("invalid regex"),
        "{e}"
    );
    let e = err("[[profiles]]\nname = \"p\"\ndetectors = [\"emial\"]");
    assert!(
        e.contains("profile \"p\"") && e.contains("unknown detector \"emial\""),
        "{e}"
    );
    let e = err("[[fields]]\nname = \"$.a[\"");
    assert!(
        e.contains("field rule \"$.a[\"") && e.contains("bad JSON path"),
        "{e}"
    );
    let e = err("[detectors.cards]\nstyle = \"partial\"");
    assert!(
        e.contains("masking.detectors.cards: no such detector"),
        "{e}"
    );
    let e = err("[[custom]]\nname = \"email\"\nregex = \"x\"");
    assert!(e.contains("not a built-in"), "{e}");
    let e = err("[[profiles]]\nname = \"p\"\nfields = [\"nope\"]");
    assert!(e.contains("no field rule named \"nope\""), "{e}");
    // Unknown keys are refused by serde.
    assert!(toml::from_str::<MaskConfig>("literal = [\"x\"]").is_err());
    // The same configuration without the mistake is accepted.
    let ok: MaskConfig =
        toml::from_str("[[custom]]\nname = \"emp\"\nregex = \"EMP-[0-9]\"").unwrap();
    assert!(MaskEngine::new(&ok, vec![], [0; 32]).is_ok());
}

#[test]
fn clean_text_is_borrowed_and_counts_name_detectors_only() {
    let m = default_masker();
    let mut c = MaskCounts::new();
    let s = "total 12\ndrwxr-xr-x 2 bob staff 64 Jan 15 12:30 src\n";
    assert!(matches!(m.mask_str(None, s, &mut c), Cow::Borrowed(_)));
    assert!(c.is_empty());
    let (out, c) = mask_counts("a@b.io c@d.io 123-45-6789");
    assert_eq!(out, "<EMAIL> <EMAIL> <SSN>");
    assert_eq!(c.len(), 2);
    assert_eq!(c["email"], 2);
    assert_eq!(c["ssn"], 1);
    assert!(c.keys().all(|k| !k.contains('@')));
}

fn stream_all(m: &Masker, chunks: &[&[u8]]) -> (Vec<Vec<u8>>, MaskCounts) {
    let mut s = m.stream();
    let mut c = MaskCounts::new();
    let mut outs = Vec::new();
    for ch in chunks {
        let mut o = Vec::new();
        s.push(ch, &mut o, &mut c);
        outs.push(o);
    }
    let mut o = Vec::new();
    s.finish(&mut o, &mut c);
    outs.push(o);
    (outs, c)
}

#[test]
fn stream_holds_only_what_a_match_in_progress_needs() {
    let m = default_masker();
    let (outs, c) = stream_all(
        &m,
        &[
            b"hello world, ",
            b"mail bob",
            b"@example.c",
            b"om now\r\n$ ",
            b"\x1b[1;32mok\x1b[0m",
            b" card 4111 1111",
            b" 1111 1111 done\n",
        ],
    );
    let text: Vec<String> = outs
        .iter()
        .map(|o| String::from_utf8_lossy(o).into_owned())
        .collect();
    // Plain text goes out at once; a word that may be an address waits.
    assert_eq!(text[0], "hello world, ");
    assert_eq!(text[1], "mail ");
    assert_eq!(text[2], "");
    assert_eq!(text[3], "<EMAIL> now\r\n$ ");
    // A finished escape sequence is not held (the terminal stays responsive).
    assert_eq!(text[4], "\x1b[1;32mok\x1b[0m");
    assert_eq!(text[5], " card ");
    assert_eq!(text[6], "<CARD> done\n");
    assert_eq!(text[7], "");
    assert_eq!(c["email"], 1);
    assert_eq!(c["card"], 1);
}

#[test]
fn stream_holds_a_private_key_block_until_its_end() {
    let m = default_masker();
    let mut s = m.stream();
    let mut c = MaskCounts::new();
    let mut out = Vec::new();
    s.push(b"before\n-----BEGIN PRIVATE KEY-----\n", &mut out, &mut c);
    for _ in 0..100 {
        s.push(
            b"MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7\n",
            &mut out,
            &mut c,
        );
    }
    assert_eq!(out, b"before\n");
    assert!(s.held() > 5000);
    s.push(b"-----END PRIVATE KEY-----\nafter\n", &mut out, &mut c);
    assert_eq!(
        String::from_utf8_lossy(&out),
        "before\n<PRIVATE_KEY>\nafter\n"
    );
    assert_eq!(s.held(), 0);
}

#[test]
fn stream_flush_releases_on_idle() {
    let m = default_masker();
    let mut s = m.stream();
    let mut c = MaskCounts::new();
    let mut out = Vec::new();
    s.push(b"$ l", &mut out, &mut c);
    assert_eq!(out, b"$ ");
    s.flush(&mut out, &mut c);
    assert_eq!(out, b"$ l");
    s.push(b"s\r\n", &mut out, &mut c);
    assert_eq!(out, b"$ ls\r\n");
}

#[test]
fn mask_stream_copies_and_counts() {
    let m = default_masker();
    let input = format!("line bob@example.com\npw {HELD}\n").repeat(5000);
    let mut output = Vec::new();
    let counts = mask_stream(&m, input.as_bytes(), &mut output).unwrap();
    let expected = "line <EMAIL>\npw <SECRET>\n".repeat(5000);
    assert_eq!(String::from_utf8(output).unwrap(), expected);
    assert_eq!(counts["email"], 5000);
    assert_eq!(counts["held_secret"], 5000);
}

#[test]
fn key_file_is_created_once_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let k1 = load_or_create_key(dir.path()).unwrap();
    let k2 = load_or_create_key(dir.path()).unwrap();
    assert_eq!(k1, k2);
    assert_ne!(k1, [0; 32]);
    std::fs::write(dir.path().join("mask-key"), b"short").unwrap();
    let e = load_or_create_key(dir.path()).unwrap_err().to_string();
    assert!(e.contains("holds 5 bytes, not 32"), "{e}");
}

// ---- streaming equals whole, and never leaks ----

/// Secrets from several detectors, with their expected replacement.
fn secrets() -> Vec<&'static str> {
    vec![
        "bob.smith@example.com",
        "andré@example.com",
        "carol%40example.org",
        "dave&#64;example.net",
        "4111 1111 1111 1111",
        "4.111111111111111e+15",
        "5555555555554444.00",
        "123-45-6789",
        "+1 (415) 555-2671",
        "DE89 3704 0044 0532 0130 00",
        "10.20.30.40",
        "2001:db8::8a2e:370:7334",
        "AKIAIOSFODNN7EXAMPLE",
        "ghp_1234567890abcdefghijklmnopqrstuvwxyz",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA75\n-----END RSA PRIVATE KEY-----",
        HELD,
        "EMP-123456",
    ]
}

fn fillers() -> Vec<&'static str> {
    vec![
        " ",
        "\n",
        " hello ",
        "\x1b[1;32m",
        "\x1b[0m",
        " v1.2.3.4 ",
        " 12:30:45 ",
        ", ",
        " pw=",
        " password: ",
        "(",
        "+",
        "-",
        " 2024-01-15 ",
        "@",
        ":",
        " total 12 ",
        "AKI",
        "eyJ",
        "--",
    ]
}

fn prop_engine() -> MaskEngine {
    engine(
        "[[masking.custom]]\nname = \"employee_id\"\nregex = \"EMP-[0-9]{6}\"\n",
        &[HELD],
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    #[test]
    fn stream_equals_whole_and_never_leaks(
        parts in prop::collection::vec((any::<bool>(), any::<prop::sample::Index>()), 1..24),
        cuts in prop::collection::vec(1usize..64, 1..40),
    ) {
        let secrets = secrets();
        let fillers = fillers();
        let mut input = String::new();
        let mut planted = Vec::new();
        for (is_secret, idx) in &parts {
            if *is_secret {
                let s = secrets[idx.index(secrets.len())];
                planted.push(s);
                // Secrets stand apart from their neighbours, as they would in text.
                input.push(' ');
                input.push_str(s);
                input.push(' ');
            } else {
                input.push_str(fillers[idx.index(fillers.len())]);
            }
        }
        let e = prop_engine();
        let m = e.masker("t", &who("a", &[]));
        let whole = m.mask_str(None, &input, &mut MaskCounts::new()).into_owned();
        for s in &planted {
            prop_assert!(!whole.contains(s), "whole output leaks {s:?}: {whole:?}");
        }
        // Cut the input into chunks of the given sizes (cycled).
        let bytes = input.as_bytes();
        let mut chunks = Vec::new();
        let mut at = 0;
        let mut i = 0;
        while at < bytes.len() {
            let n = cuts[i % cuts.len()].min(bytes.len() - at);
            chunks.push(&bytes[at..at + n]);
            at += n;
            i += 1;
        }
        let (outs, _) = stream_all(&m, &chunks);
        let streamed: Vec<u8> = outs.concat();
        prop_assert_eq!(String::from_utf8_lossy(&streamed).into_owned(), whole.clone());
        // No released chunk ever holds a secret, and neither does any
        // concatenation of them (a secret split across two releases).
        for s in &planted {
            for o in &outs {
                prop_assert!(!o.windows(s.len()).any(|w| w == s.as_bytes()));
            }
        }
    }
}

#[test]
fn engine_is_shareable_and_debug_hides_credentials() {
    fn shared<T: Send + Sync>() {}
    fn sendable<T: Send>() {}
    shared::<MaskEngine>();
    shared::<Masker>();
    sendable::<StreamMasker>();
    let e = engine("[masking]\nliterals = [\"Nightingale\"]", &[HELD]);
    let m = e.masker("t", &who("a", &[]));
    let mut s = m.stream();
    s.push(b"pw Pg-Adm1n", &mut Vec::new(), &mut MaskCounts::new());
    for shown in [format!("{e:?}"), format!("{m:?}"), format!("{s:?}")] {
        assert!(
            !shown.contains("Pg-Adm1n") && !shown.contains("Nightingale"),
            "{shown}"
        );
    }
    // The held bytes are still there: Debug shows only how many.
    assert!(s.held() > 0);
}

#[test]
fn kubernetes_secrets_in_lists_and_watch_events() {
    let m = default_masker();
    let mut c = MaskCounts::new();
    let mut list = json!({ "kind": "List", "items": [
        { "kind": "Secret", "data": { "k": "czNjcjN0" } },
        { "kind": "ConfigMap", "data": { "k": "czNjcjN0" } }
    ]});
    m.mask_json(&mut list, &mut c);
    assert_ne!(list["items"][0]["data"]["k"], "czNjcjN0");
    assert_eq!(list["items"][1]["data"]["k"], "czNjcjN0");
    let mut event = json!({ "type": "ADDED", "object": { "kind": "Secret", "stringData": { "pw": "hunter2" } } });
    m.mask_json(&mut event, &mut c);
    assert_eq!(event["object"]["stringData"]["pw"], "<KUBE_SECRET>");
    assert_eq!(c["kube_secret"], 2);
}
