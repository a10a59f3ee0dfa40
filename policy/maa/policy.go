// Package maapolicy holds the MAA attestation policies the bootstrap sets on the attestation
// provider (and the local stack on its emulator), embedded from the text files beside it.
package maapolicy

import _ "embed"

// AzureGuest is the policy for attestation type AzureGuest (azureguest.txt): a token is issued
// only for a VM whose measured boot had Secure Boot on.
//
//go:embed azureguest.txt
var AzureGuest string
