//! A token endpoint's answer as a hostile or broken authorization server could send it: the
//! first byte picks the status and what was asked for, the rest is the body. Whatever comes,
//! the result is a typed error or a token fit for a header with a bounded lifetime.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_oauth::outbound::answer::{parse_answer, Expect, TokenAnswer, MAX_LIFETIME_SECONDS};
use mesh_oauth::outbound::request::{ACCESS_TOKEN_TYPE, TXN_TOKEN_TYPE};

const MAX_TOKEN_BYTES: usize = 16 * 1024;

fuzz_target!(|data: &[u8]| {
    let Some((selector, body)) = data.split_first() else {
        return;
    };
    let status = match selector & 0x3 {
        0 | 1 => Some(200),
        2 => Some(400 + u32::from(selector >> 4)),
        _ => None,
    };
    let expect = match (selector >> 2) & 0x3 {
        0 | 1 => Expect::ClientCredentials,
        2 => Expect::Exchange {
            requested_token_type: ACCESS_TOKEN_TYPE,
        },
        _ => Expect::Exchange {
            requested_token_type: TXN_TOKEN_TYPE,
        },
    };
    let answer = TokenAnswer { status, body };
    match parse_answer(&answer, expect, MAX_TOKEN_BYTES) {
        Ok(issued) => {
            assert_eq!(status, Some(200), "a token only from a 200");
            let token = issued.access_token.as_bytes();
            assert!(!token.is_empty() && token.len() <= MAX_TOKEN_BYTES);
            assert!(
                token.iter().all(|b| (0x21..=0x7e).contains(b)),
                "header-safe token"
            );
            assert!((1..=MAX_LIFETIME_SECONDS).contains(&issued.expires_in_seconds));
            assert_eq!(
                issued.issued_token_type.is_some(),
                matches!(expect, Expect::Exchange { .. })
            );
        }
        Err(error) => {
            // Log text never carries the body.
            let described = error.describe();
            assert!(described.len() < 200 && !described.contains('\n'));
            let _ = error.reason();
        }
    }
});
