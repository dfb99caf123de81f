// apiclient: what an in-cluster program does to call the Kubernetes API, and nothing more (no
// kubectl, no client library): it reads the pod's service-account token and CA from
// /var/run/secrets/kubernetes.io/serviceaccount, verifies the API server's certificate against
// that CA alone, and sends each request with the token. For the tests of pods on cells.
//
//	apiclient [-token-file F] [-timeout 60s] URL...
//
// Each URL may name $KUBERNETES_SERVICE_HOST and $KUBERNETES_SERVICE_PORT (expanded from the
// environment, as client-go's InClusterConfig builds its address). For each URL it prints one
// line: "GET <url> <status>" or "GET <url> ERR <error>"; connection errors are retried until the
// timeout (the cell's Service rules or the cluster DNS may still be coming up). Exit status 0 when
// every request got an HTTP answer, 1 otherwise.
package main

import (
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"
)

const saDir = "/var/run/secrets/kubernetes.io/serviceaccount"

func main() {
	tokenFile := flag.String("token-file", saDir+"/token", "bearer token file; empty: send no token")
	caFile := flag.String("ca-file", saDir+"/ca.crt", "the CA that must have signed the API server's certificate")
	timeout := flag.Duration("timeout", 60*time.Second, "how long connection errors are retried")
	flag.Parse()

	ca, err := os.ReadFile(*caFile)
	if err != nil {
		fmt.Println("ERR", err)
		os.Exit(1)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		fmt.Println("ERR no certificate in", *caFile)
		os.Exit(1)
	}
	token := ""
	if *tokenFile != "" {
		b, err := os.ReadFile(*tokenFile)
		if err != nil {
			fmt.Println("ERR", err)
			os.Exit(1)
		}
		token = strings.TrimSpace(string(b))
	}
	client := &http.Client{
		Timeout:   10 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}},
	}
	fmt.Printf("KUBERNETES_SERVICE_HOST=%s KUBERNETES_SERVICE_PORT=%s\n", os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT"))
	ok := true
	for _, raw := range flag.Args() {
		url := os.ExpandEnv(raw)
		deadline := time.Now().Add(*timeout)
		for {
			status, err := get(client, url, token)
			if err == nil {
				fmt.Printf("GET %s %d\n", url, status)
				break
			}
			if time.Now().After(deadline) {
				fmt.Printf("GET %s ERR %v\n", url, err)
				ok = false
				break
			}
			time.Sleep(time.Second)
		}
	}
	if !ok {
		os.Exit(1)
	}
}

func get(c *http.Client, url, token string) (int, error) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	res, err := c.Do(req)
	if err != nil {
		return 0, err
	}
	defer res.Body.Close()
	_, _ = io.Copy(io.Discard, res.Body)
	return res.StatusCode, nil
}
