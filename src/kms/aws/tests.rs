//! Unit tests of the AWS adapter's pure parts (key ids, error codes); the adapter itself is tested against moto in tests/aws.

use super::errors::classify_code;
use super::*;

#[test]
fn key_arns_are_told_from_ids_and_aliases() {
    assert!(is_key_arn(
        "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    ));
    assert!(is_key_arn("arn:aws-cn:kms:cn-north-1:1:key/x"));
    assert!(!is_key_arn("arn:aws:kms:us-east-1:123456789012:alias/rkms"));
    assert!(!is_key_arn("alias/rkms"));
    assert!(!is_key_arn("1234abcd-12ab-34cd-56ef-1234567890ab"));
}

#[test]
fn error_codes_map_to_kinds_the_broker_acts_on() {
    let cases = [
        (Some("ThrottlingException"), 400, KmsErrorKind::Throttled),
        (
            Some("InvalidCiphertextException"),
            400,
            KmsErrorKind::Integrity,
        ),
        (
            Some("AccessDeniedException"),
            400,
            KmsErrorKind::Misconfigured,
        ),
        (Some("DisabledException"), 400, KmsErrorKind::Misconfigured),
        (Some("KMSInternalException"), 500, KmsErrorKind::Unavailable),
        (None, 503, KmsErrorKind::Unavailable),
        (None, 429, KmsErrorKind::Throttled),
        (Some("Weird"), 400, KmsErrorKind::Other),
    ];
    for (code, status, kind) in cases {
        assert_eq!(classify_code(code, status), kind, "{code:?} {status}");
    }
}
