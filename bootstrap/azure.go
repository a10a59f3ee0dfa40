package main

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azcertificates"
	"github.com/spf13/pflag"
	"sigs.k8s.io/yaml"

	"github.com/attested-kv/attested-kv/internal/atomicfile"
	"github.com/attested-kv/attested-kv/internal/azure"
	"github.com/attested-kv/attested-kv/internal/cliutil"
	"github.com/attested-kv/attested-kv/internal/keyvault"
	"github.com/attested-kv/attested-kv/internal/maa"
	"github.com/attested-kv/attested-kv/internal/notationcfg"
	"github.com/attested-kv/attested-kv/internal/provision"
	maapolicy "github.com/attested-kv/attested-kv/policy/maa"
)

// runAzure runs plan, apply or destroy against Azure Resource Manager.
func runAzure(ctx context.Context, cmd string, args []string, stdout, stderr io.Writer) int {
	fs := pflag.NewFlagSet("attest-bootstrap "+cmd, pflag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.SortFlags = false
	var cfg azure.Config
	configFile := fs.String("config", "", "YAML or JSON file with the settings below (flags override it); keys: subscriptionId, tenantId, resourceGroup, location, namePrefix, operatorPrincipalId, operatorPrincipalType, clusterPrincipalId, purgeProtection, hsm, imageBuilder, buildLayer {artifactsUrl, artifactsSha256, vmSize, run}, replicas; an unknown key is an error")
	fs.StringVar(&cfg.SubscriptionID, "subscription", os.Getenv("AZURE_SUBSCRIPTION_ID"), "subscription id (env AZURE_SUBSCRIPTION_ID)")
	fs.StringVar(&cfg.TenantID, "tenant", os.Getenv("AZURE_TENANT_ID"), "Entra ID tenant id (env AZURE_TENANT_ID)")
	fs.StringVar(&cfg.ResourceGroup, "resource-group", "", "resource group (apply creates it if absent)")
	fs.StringVar(&cfg.Location, "location", "", "Azure region, e.g. westeurope")
	fs.StringVar(&cfg.NamePrefix, "name-prefix", "", "prefix of every resource name (3-12 lower-case letters and digits)")
	fs.StringVar(&cfg.OperatorPrincipalID, "operator-object-id", "", "object id of the user or service principal running apply (gets Certificates Officer and Attestation Contributor, which apply withdraws from an operator named before; it needs Microsoft.Authorization/roleDefinitions/write for the custom signer role, e.g. Owner)")
	fs.StringVar(&cfg.OperatorPrincipalType, "operator-type", "User", "User or ServicePrincipal")
	fs.StringVar(&cfg.ClusterPrincipalID, "cluster-principal-id", "", "AKS kubelet identity's object id, granted AcrPull (withdrawn from one named before; kept if this is not given)")
	fs.BoolVar(&cfg.PurgeProtection, "purge-protection", false, "turn on the vault's purge protection (irreversible)")
	fs.BoolVar(&cfg.HSM, "hsm", false, "Premium vault and an RSA-HSM signing key (once applied, later applies without it are refused)")
	fs.BoolVar(&cfg.ImageBuilder, "image-builder", false, "apply: also create the build layer (compute gallery, Trusted Launch image definition, Azure Image Builder template running as its own identity <prefix>-imagebuilder with a custom image publisher role on the gallery)")
	fs.StringVar(&cfg.BuildLayer.ArtifactsURL, "artifacts-url", "", "image builder: https URL of the tools tarball (make dist)")
	fs.StringVar(&cfg.BuildLayer.ArtifactsSHA256, "artifacts-sha256", "", "image builder: hex SHA-256 of the tarball (make dist prints it)")
	fs.StringVar(&cfg.BuildLayer.VMSize, "build-vm-size", "", "image builder: build VM size (default "+azure.DefaultBuildVMSize+")")
	fs.BoolVar(&cfg.BuildLayer.Run, "run-image-build", false, "image builder: start a build and wait for it")
	fs.StringSliceVar(&cfg.Replicas, "replicas", nil, "apply: regions to geo-replicate the registry to (REGION,...)")
	credType := fs.String("credential-type", "", "azurecli, environment, managedid, workloadid; unset = DefaultAzureCredential")
	outputsFile := fs.String("outputs", "attested-kv-outputs.json", "apply: where to write the endpoints and ids the other binaries need")
	notationDir := fs.String("notation-config", "", "apply: write the Notation trust policy and trust store for the certificate here (default: NOTATION_CONFIG or notation's own directory)")
	purge := fs.Bool("purge", false, "destroy: purge the soft-deleted vault")
	output := fs.StringP("output", "o", "text", "output format: text or json")
	timeout := fs.Duration("timeout", 30*time.Minute, "overall time limit (for apply --run-image-build the default is 3h: the build itself may take up to "+azure.BuildTimeout.String()+")")
	fs = commandFlags(fs, cmd)
	usage := func(w io.Writer) {
		fmt.Fprintf(w, "Usage: attest-bootstrap %s [flags]\n\n%s\n\nFlags:\n%s", cmd, azureHelp(cmd), fs.FlagUsages())
	}
	if code, ok := parseFlags(fs, cmd, args, usage, stdout, stderr); !ok {
		return code
	}
	fail := func(code int, err error) int { fmt.Fprintf(stderr, "attest-bootstrap %s: %v\n", cmd, err); return code }
	if err := cliutil.CheckFormat(*output); err != nil {
		return fail(2, err)
	}
	if *configFile != "" {
		b, err := os.ReadFile(*configFile)
		if err != nil {
			return fail(2, err)
		}
		// Strict: a key spelt like a flag (purge-protection) instead of its field (purgeProtection)
		// must not be dropped without a word.
		var fromFile azure.Config
		if err := yaml.UnmarshalStrict(b, &fromFile); err != nil {
			return fail(2, fmt.Errorf("%s: %w", *configFile, err))
		}
		mergeConfig(&cfg, fromFile, fs)
	}
	cfg.AttestationPolicy = maapolicy.AzureGuest
	if err := cfg.Validate(); err != nil {
		return fail(2, err)
	}
	if !fs.Changed("timeout") && cfg.BuildLayer.Run {
		// Waiting for an image build must not time out before the build does.
		*timeout = 3 * time.Hour
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	cred, err := keyvault.NewCredential(keyvault.CredentialOptions{Type: *credType})
	if err != nil {
		return fail(2, err)
	}
	cl, err := azure.NewClients(cfg.SubscriptionID, cred, nil)
	if err != nil {
		return fail(1, err)
	}
	cl.PolicySetter = func(_ context.Context, uri string) (azure.PolicySetter, error) {
		return maa.NewPolicyClient(uri, cred, nil)
	}
	cl.Certificates = func(ctx context.Context, vaultURL string, c provision.SigningCertificate) (*provision.Result, error) {
		return provision.EnsureSigningCertificate(ctx, vaultURL, cred, &azcertificates.ClientOptions{}, c)
	}
	cl.CertificatePlan = func(ctx context.Context, vaultURL string, c provision.SigningCertificate) (string, string, error) {
		return provision.PlanSigningCertificate(ctx, vaultURL, cred, &azcertificates.ClientOptions{}, c)
	}

	var steps []azure.Step
	switch cmd {
	case "plan":
		steps, err = azure.Plan(ctx, cl, cfg)
	case "destroy":
		steps, err = azure.Destroy(ctx, cl, cfg, *purge, stderr)
		if err == nil {
			// Something destroy had to delete is still there (a step "kept" says what and why):
			// a script must not take the deployment for gone.
			err = azure.KeptError(steps)
		}
	case "apply":
		var out *azure.Outputs
		out, steps, err = azure.Apply(ctx, cl, cfg, stderr)
		if err == nil {
			err = writeApplyOutputs(out, *outputsFile, *notationDir, cfg.NamePrefix)
		}
		if err == nil && *output == "json" {
			cliutil.WriteJSON(stdout, map[string]any{"steps": steps, "outputs": out})
			return 0
		}
	}
	if *output == "json" {
		cliutil.WriteJSON(stdout, map[string]any{"steps": steps, "error": errString(err)})
	} else {
		for _, s := range steps {
			fmt.Fprintf(stdout, "%-8s %-20s %-26s %s\n", s.Action, s.Kind, s.Name, s.Detail)
		}
	}
	if err != nil {
		return fail(1, err)
	}
	return 0
}

// commandFlags returns the flags of all that cmd (plan, apply or destroy) reads: each command
// lists and accepts only its own.
func commandFlags(all *pflag.FlagSet, cmd string) *pflag.FlagSet {
	fs := pflag.NewFlagSet(all.Name(), pflag.ContinueOnError)
	fs.SetOutput(all.Output())
	fs.SortFlags = false
	all.VisitAll(func(f *pflag.Flag) {
		if readsFlag(cmd, f.Name) {
			fs.AddFlag(f)
		}
	})
	return fs
}

// readsFlag reports whether cmd reads the flag name: plan reads what decides what apply would
// do; destroy what finds the deployment, and --purge.
func readsFlag(cmd, name string) bool {
	switch name {
	case "operator-type", "purge-protection", "run-image-build", "replicas", "outputs", "notation-config":
		return cmd == "apply"
	case "hsm", "image-builder", "artifacts-url", "artifacts-sha256", "build-vm-size",
		// plan reports what becomes of the cluster's AcrPull, which depends on the one named.
		"cluster-principal-id":
		return cmd == "plan" || cmd == "apply"
	case "purge":
		return cmd == "destroy"
	}
	return true
}

// azureHelp is what the help of cmd says it does.
func azureHelp(cmd string) string {
	switch cmd {
	case "plan":
		return "Report what apply would create, update or refuse; nothing is changed."
	case "apply":
		return "Create or update the deployment, idempotently; write the outputs file and the Notation trust\npolicy and store."
	}
	return "Delete what apply created (what carries the deployment's tag), and the resource group if apply\ncreated it and nothing else is in it: what is left there counts as apply's only if it carries the\ntag and apply creates a resource of its type and name (a tag alone may be inherited from the group)."
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// mergeConfig fills the fields of cfg that no flag set from the config file.
func mergeConfig(cfg *azure.Config, file azure.Config, fs *pflag.FlagSet) {
	set := func(flag string, dst *string, v string) {
		if !fs.Changed(flag) && v != "" {
			*dst = v
		}
	}
	set("subscription", &cfg.SubscriptionID, file.SubscriptionID)
	set("tenant", &cfg.TenantID, file.TenantID)
	set("resource-group", &cfg.ResourceGroup, file.ResourceGroup)
	set("location", &cfg.Location, file.Location)
	set("name-prefix", &cfg.NamePrefix, file.NamePrefix)
	set("operator-object-id", &cfg.OperatorPrincipalID, file.OperatorPrincipalID)
	set("operator-type", &cfg.OperatorPrincipalType, file.OperatorPrincipalType)
	set("cluster-principal-id", &cfg.ClusterPrincipalID, file.ClusterPrincipalID)
	if !fs.Changed("purge-protection") && file.PurgeProtection {
		cfg.PurgeProtection = true
	}
	if !fs.Changed("hsm") && file.HSM {
		cfg.HSM = true
	}
	if !fs.Changed("image-builder") && file.ImageBuilder {
		cfg.ImageBuilder = true
	}
	set("artifacts-url", &cfg.BuildLayer.ArtifactsURL, file.BuildLayer.ArtifactsURL)
	set("artifacts-sha256", &cfg.BuildLayer.ArtifactsSHA256, file.BuildLayer.ArtifactsSHA256)
	set("build-vm-size", &cfg.BuildLayer.VMSize, file.BuildLayer.VMSize)
	if !fs.Changed("run-image-build") && file.BuildLayer.Run {
		cfg.BuildLayer.Run = true
	}
	if !fs.Changed("replicas") && len(file.Replicas) > 0 {
		cfg.Replicas = file.Replicas
	}
}

// writeApplyOutputs writes the outputs file and the Notation trust policy and store for the
// created certificate.
func writeApplyOutputs(out *azure.Outputs, path, notationDir, prefix string) error {
	b, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		return err
	}
	if err := atomicfile.Write(path, append(b, '\n'), 0o644); err != nil {
		return err
	}
	if notationDir == "" {
		notationDir = notationcfg.DefaultConfigDir()
	}
	if err := notationcfg.WriteTrust(notationDir, notationcfg.Trust{
		PolicyName: "attested-kv-" + prefix, StoreName: "attested-kv-" + prefix, Scopes: []string{"*"},
		Roots:      []*x509.Certificate{out.Certificate},
		Identities: []string{"x509.subject: " + out.CertificateSubject},
	}); err != nil {
		return fmt.Errorf("notation trust policy in %s: %w", filepath.Clean(notationDir), err)
	}
	return nil
}
