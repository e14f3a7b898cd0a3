// Command loadtest measures a running `dllm serve` on this machine:
// requests/s and latency percentiles at each number of concurrent clients,
// a bounded number of requests and a time limit per level. It only talks to
// loopback addresses.
//
//	go run ./serve/loadtest -url http://127.0.0.1:8000 -clients 1,4,16 -requests 64
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

func main() {
	base := flag.String("url", "http://127.0.0.1:8000", "server (loopback only)")
	levels := flag.String("clients", "1,4,16", "concurrent clients, one level each")
	requests := flag.Int("requests", 64, "requests per level (at most)")
	limit := flag.Duration("max-time", 60*time.Second, "time limit per level")
	body := flag.String("body", `{"prompt": "Once upon a time", "max_tokens": 32, "steps": 32, "block_length": 32}`, "request body (seed is set per request)")
	key := flag.String("api-key", "", "bearer token")
	flag.Parse()
	u, err := url.Parse(*base)
	if err != nil || u.Hostname() == "" {
		fail("-url %q is not a URL", *base)
	}
	if ip := net.ParseIP(u.Hostname()); !(u.Hostname() == "localhost" || ip != nil && ip.IsLoopback()) {
		fail("-url %s is not a loopback address: the load test only runs against this machine", *base)
	}
	var req map[string]any
	if err := json.Unmarshal([]byte(*body), &req); err != nil {
		fail("-body is not a JSON object: %v", err)
	}
	fmt.Println("| clients | requests | seconds | requests/s | p50 latency | p99 latency | completion tokens/s | mean batch rows |")
	fmt.Println("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
	for _, f := range strings.Split(*levels, ",") {
		c, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || c < 1 {
			fail("-clients: %q is not a positive integer", f)
		}
		run(*base+"/v1/completions", *key, req, c, *requests, *limit)
	}
}

type sample struct {
	lat    time.Duration
	tokens int
	rows   int
}

func run(endpoint, key string, req map[string]any, clients, requests int, limit time.Duration) {
	var mu sync.Mutex
	var got []sample
	errs := 0
	next := 0
	deadline := time.Now().Add(limit)
	t0 := time.Now()
	var wg sync.WaitGroup
	for c := 0; c < clients; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				mu.Lock()
				i := next
				next++
				mu.Unlock()
				if i >= requests || time.Now().After(deadline) {
					return
				}
				r := map[string]any{}
				for k, v := range req {
					r[k] = v
				}
				r["seed"] = i
				s, err := one(endpoint, key, r)
				mu.Lock()
				if err != nil {
					errs++
					fmt.Fprintln(os.Stderr, "loadtest:", err)
				} else {
					got = append(got, s)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	secs := time.Since(t0).Seconds()
	if len(got) == 0 {
		fmt.Printf("| %d | 0 (%d errors) | %.1f | - | - | - | - | - |\n", clients, errs, secs)
		return
	}
	lats := make([]time.Duration, len(got))
	tokens, rows := 0, 0
	for i, s := range got {
		lats[i] = s.lat
		tokens += s.tokens
		rows += s.rows
	}
	slices.Sort(lats)
	pct := func(p float64) time.Duration { return lats[min(len(lats)-1, int(p*float64(len(lats))))] }
	note := ""
	if errs > 0 {
		note = fmt.Sprintf(" (%d errors)", errs)
	}
	fmt.Printf("| %d | %d%s | %.1f | %.2f | %.0f ms | %.0f ms | %.0f | %.1f |\n", clients, len(got), note, secs,
		float64(len(got))/secs, ms(pct(0.5)), ms(pct(0.99)), float64(tokens)/secs, float64(rows)/float64(len(got)))
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func one(endpoint, key string, r map[string]any) (sample, error) {
	b, _ := json.Marshal(r)
	hr, _ := http.NewRequest("POST", endpoint, bytes.NewReader(b))
	hr.Header.Set("Content-Type", "application/json")
	if key != "" {
		hr.Header.Set("Authorization", "Bearer "+key)
	}
	t0 := time.Now()
	resp, err := http.DefaultClient.Do(hr)
	if err != nil {
		return sample{}, err
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	lat := time.Since(t0)
	if resp.StatusCode != 200 {
		return sample{}, fmt.Errorf("%d %s", resp.StatusCode, raw)
	}
	var out struct {
		Usage struct {
			CompletionTokens int `json:"completion_tokens"`
		} `json:"usage"`
		DLLM struct {
			BatchRows int `json:"batch_rows"`
		} `json:"dllm"`
	}
	if err := json.Unmarshal(raw, &out); err != nil {
		return sample{}, err
	}
	return sample{lat: lat, tokens: out.Usage.CompletionTokens, rows: out.DLLM.BatchRows}, nil
}

func fail(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "loadtest: "+format+"\n", a...)
	os.Exit(2)
}
