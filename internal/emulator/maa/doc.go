// Package maa is a local emulator of Microsoft Azure Attestation (MAA) for Azure VM guests
// (attestation type AzureGuest), for machines that cannot reach Azure.
//
// It speaks MAA's wire format (the shared types of internal/maa, settled from Azure's own guest
// client) and really verifies the TPM evidence it is sent, so that whatever passes here would also
// pass real MAA as far as the public sources tell; where they do not tell, the emulator is the
// stricter of the plausible choices. It issues RS256 tokens shaped like real ones, encrypted to
// the TPM's ephemeral key as AzureGuest responses are.
//
// # Checks
//
// POST /attest/AzureGuest?api-version=2020-10-01 refuses, each with its own CloudError code
// (the Code* constants) and without a token:
//   - a Content-Type other than application/json (415; parameters allowed, a charset only if
//     UTF-8);
//   - a body over MaxAttestBodyBytes, malformed JSON (duplicate keys, unknown fields, member names
//     that differ from the wire names even only in case, trailing data), AttestationInfo that is
//     not base64url, inner binary fields that are not strict standard base64 (with padding, no
//     line breaks), ClientPayload values that are not base64;
//   - AttestationProtocolVersion other than "2.0", IsolationInfo other than TrustedLaunch (no
//     confidential-VM evidence is emulated), OSType other than Linux;
//   - an AK certificate that does not parse, is a CA, is not time-valid, or does not chain to
//     Config.TrustedRoots through Config.Intermediates (ExtKeyUsageAny; a well-formed critical SAN
//     is tolerated, as for TPM certificates);
//   - an AikPub that is not an RSA restricted signing, TPM-resident key with RSASSA-SHA256, or whose
//     key differs from the certificate's;
//   - a quote whose signature is not the AK's over the raw TPMS_ATTEST, that is not a TPM-generated
//     QUOTE, carries qualifying data, does not select exactly the SHA-256 bank and PcrSet, or whose
//     pcrDigest is not the hash of the PCR values sent; a PcrSet without PCRs 0-7;
//   - an ephemeral key that is not RSA-2048, decrypt-only, unrestricted, fixedTPM/fixedParent/
//     sensitiveDataOrigin and policy-only (no userWithAuth), or whose authPolicy is not
//     TPM2_PolicyPCR over the quoted PCR selection and values;
//   - a certification of it that the AK did not sign, that is not a CERTIFY, or that names another
//     object than EncKeyPub (Name = nameAlg || SHA-256(TPMT_PUBLIC));
//   - a certification and a quote from different TPM boots (resetCount, restartCount, firmware)
//     or further apart in TPM clock than Config.MaxClockSkewBetweenQuoteAndCertify;
//   - a certification already used for an issued token (see Freshness);
//   - a TCG log that does not parse or does not replay to the quoted SHA-256 PCRs;
//   - evidence the attestation policy does not authorize.
//
// # Approximations (what real MAA does here is not public)
//
//   - Authentication: the emulator serves /attest/AzureGuest to anyone, as Azure's guest
//     attestation client expects (it sends no credential). A real provider's
//     tpmAttestationAuthentication setting may require one; UNCONFIRMED whether it covers
//     AzureGuest (the client explains a 401).
//   - Freshness: MAA's replay defences are UNCONFIRMED. The emulator remembers the SHA-256 of
//     every EncKeyCertifyInfo it issued a token for, for the token lifetime, and refuses it again.
//     The cache is bounded and never forgets a live entry: an AK holding
//     Config.ReplayEntriesPerAK live entries has its attestations refused (429), so that one TPM
//     cannot lock the others out, and a cache full of Config.ReplayCacheSize live entries refuses
//     every new attestation (503). The protocol's own freshness is the encrypted response, which
//     only that TPM in that PCR state can open.
//   - Secure-boot claims come from the TCG log replayed against the quote: secureboot is the
//     measured SecureBoot variable. x-ms-azurevm-default-securebootkeysvalidated and
//     -dbvalidated are true only when the measured PK, KEK and db are non-empty and hold only
//     certificates listed in Config.DefaultSecureBootKeys (SHA-256 of the DER; no hash entries),
//     the emulator's stand-in for Microsoft's default keys: keys someone enrolled themselves are
//     not default ones, and with the list empty both claims are false. db counts as validated
//     only under default PK and KEK, whose holders could rewrite it. x-ms-azurevm-dbxvalidated
//     means only that a non-empty dbx was measured, not that it is a current revocation list.
//     How MAA decides all three is UNCONFIRMED. With no log (Azure Trusted Launch may give none)
//     all four are false: fail closed; what MAA issues then is UNCONFIRMED.
//   - x-ms-azurevm-debuggersdisabled is true and x-ms-azurevm-bootdebug-enabled false, as in the
//     real tokens, only when the replayed log proves no UEFI debugger: PCR 7 has events, its
//     Secure Boot state parses, and no PCR 7 event other than EV_NO_ACTION extended the
//     debugger's digest, SHA-256 of "UEFI Debug Mode", whatever type the log gives that event
//     (the type is not measured, so a relabelled event still counts). Otherwise (a debugger
//     recorded, no log, no PCR 7 events, or a PCR 7 that does not parse) they are false and true:
//     fail closed; what MAA issues without a log, or for an unreadable PCR 7, is UNCONFIRMED.
//   - Client-asserted claims: x-ms-azurevm-ostype, -osdistro, -osbuild, -osversion-major and
//     -osversion-minor are copied from the request's OSType, OSDistro, OSBuild, OSVersionMajor and
//     OSVersionMinor (only OSType "Linux" and a major version above 0 are accepted). Nothing in the
//     quote or the log verifies them, as far as the public sources tell real MAA does not either
//     (UNCONFIRMED), so a rule on them stops mistakes, not an attacker. The runtime claims under
//     x-ms-runtime.client-payload are the client's too, bound to the evidence only by being sent
//     with it.
//   - Windows boot-configuration claims (kerneldebug, testsigning, flightsigning, hypervisordebug,
//     elam false; signingdisabled true; hvci-policy 0) are the constants of the real Linux token
//     in testdata/real; they say nothing about the Linux boot.
//   - x-ms-azurevm-vmid is the UUID first label of the AK certificate's CN (Azure issues
//     CN=<vm-id>.TrustedVM.Azure.windows.net), else a UUID-shaped id derived from the AK.
//   - x-ms-policy-hash is base64url SHA-256 of the policy text, and x-ms-policy-token-hash of a
//     PUT is base64url SHA-256 of the JWS as sent; MAA's exact inputs are UNCONFIRMED.
//   - Policies: a subset of MAA's language (see policy.go) with our reading of its semantics:
//     rules in order, a matching deny() refuses at once, authorization needs a matching permit().
//     The policy type segment is matched case-insensitively (UNCONFIRMED); only unsigned policies
//     (the AAD trust model) are accepted; the policy endpoints require a bearer token that
//     Config.AuthorizePolicyRequest accepts, and refuse every request (401) when it is not set.
//     A PUT must send the compact JWS itself as text/plain (the REST spec's media type; the
//     header Azure's SDKs send is UNCONFIRMED): another Content-Type, or the JWS quoted as a JSON
//     string, is refused with 415, and whitespace around it with 400.
//   - Qualifying data in the quote or the certification is refused: Azure's client sends none and
//     nothing in the protocol would check it (UNCONFIRMED whether MAA refuses it).
//   - Error codes and the statuses of refusals (400, 401, 405, 413, 415, 429, 503) are the emulator's
//     own.
package maa
