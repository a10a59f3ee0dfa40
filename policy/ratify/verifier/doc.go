// Package verifier is the Ratify v1 external verifier for the MAA token referrer (artifact type
// application/vnd.attested-kv.maa-token.v1+jwt): given what Ratify hands an exec plugin, it
// decides whether the token proves that the subject image was signed from an attested machine.
// Command ratify-maa-verifier (policy/ratify) only wires a process to [Run].
//
// Ratify runs the verifier once per token referrer with RATIFY_VERIFIER_COMMAND=VERIFY,
// RATIFY_VERIFIER_SUBJECT=<registry/repo@sha256:...> and RATIFY_VERIFIER_VERSION in the
// environment, and one JSON object on stdin, [Input]: {"config": <the verifier's config>,
// "storeConfig": {...}, "referenceDesc": <the referrer's descriptor>}. It reads back one JSON
// object from stdout, [Result]: {"isSuccess", "name", "type", "message", "extensions"}.
// RATIFY_VERIFIER_VERSION is the verifier config's version; only [SupportedVersions] ("1.0.0",
// what Ratify sends for a Verifier resource without one) are accepted, and the command refuses
// another as Ratify's plugin skeleton does, with its error JSON ([Error], code 6) and exit status
// 1 ([CheckVersion]). The protocol, as Ratify v1 implements it, is described in
// /work/shared/reference/oras-ratify.md §3.3 (exec plugins) and §3.4 (the notation verifier whose
// verificationCerts this one follows).
//
// [Run] succeeds only if this token is the one a trusted Notation signature of the subject names,
// and the token verifies, is bound to the subject and the expected key, was fresh at signing, and
// meets the claim rules (internal/imageverify, the same code as `oras-attest verify`). The
// referenceDesc must name, by digest, a referrer of the token artifact type. Every failure is a
// Result with IsSuccess false and a message naming the cause, and the whole verification is
// answered within the config's timeout ([DefaultTimeout] if none).
//
// The verifier config keys are the fields of [Config]. The registry is read with the store's
// authProvider ([AuthProvider]): azureWorkloadIdentity or azureManagedIdentity (an Entra ID token
// exchanged for an ACR refresh token on *.azurecr.io, after any Docker credentials), or the
// Docker credentials.
package verifier
