package framework

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// ServiceAccountKubeconfig makes sure ServiceAccount namespace/name exists,
// gets a token for it through the TokenRequest API (as a projected token
// volume would), and writes a kubeconfig with it for processes in node
// namespaces. Its permissions are whatever RBAC grants the account (e.g. the
// project's manifests/ applied with ApplyFile).
func (c *Cluster) ServiceAccountKubeconfig(t testing.TB, namespace, name string) (path, token string) {
	t.Helper()
	path, token, err := c.serviceAccountKubeconfig(context.Background(), namespace, name)
	if err != nil {
		t.Fatalf("ServiceAccountKubeconfig(%s/%s): %v", namespace, name, err)
	}
	return path, token
}

func (c *Cluster) serviceAccountKubeconfig(ctx context.Context, namespace, name string) (string, string, error) {
	if err := c.ensureNamespace(ctx, namespace); err != nil {
		return "", "", err
	}
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace}}
	if _, err := c.Client.CoreV1().ServiceAccounts(namespace).Create(ctx, sa, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return "", "", fmt.Errorf("creating ServiceAccount: %w", err)
	}
	tr, err := c.Client.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, name, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr.To(int64((24 * time.Hour).Seconds()))},
	}, metav1.CreateOptions{})
	if err != nil {
		return "", "", fmt.Errorf("TokenRequest: %w", err)
	}
	path := filepath.Join(c.RunDir, "kubeconfigs", namespace+"-"+name+".kubeconfig")
	user := "system:serviceaccount:" + namespace + ":" + name
	if err := writeKubeconfig(path, c.pki.CAPEM, tr.Status.Token, user); err != nil {
		return "", "", err
	}
	return path, tr.Status.Token, nil
}
