// The SD-card bench's load generator: etcd 3.4's own Go client (clientv3, from Debian's
// golang-etcd-server-dev), so the client costs the same against both servers and far less than
// either (a Node gRPC client costs more CPU per call than the servers it measures).
//
// Build (sdcard.bench.ts does it, cached by the source's hash):
//
//	GO111MODULE=off GOPATH=/usr/share/gocode GOFLAGS= go build -o loadgen main.go
//
// Modes, each printing JSON lines on stdout:
//
//	loadgen -mode mix -endpoint HOST:PORT [flags]   a Kubernetes-like write mix (below)
//	loadgen -mode seq -endpoint HOST:PORT           back-to-back puts from one goroutine
//	loadgen -mode inflight -n 32 -endpoint ...      the same from N goroutines
//
// The mix. Preload: -keys keys under /registry/<kind>/<namespace>/<name>, values of
// -value-bytes random bytes (incompressible on purpose: neither server compresses, and a file
// system or card that did must not flatter either), 64 puts in flight. Then, for -duration:
//   - steady: -steady-rate puts a second over the preloaded keys, OPEN LOOP: each is issued on
//     its schedule in its own goroutine and timed from its scheduled moment, so a server that
//     stalls shows up as latency instead of slowing the client down (no coordinated omission);
//   - bursts: every -burst-every (the first at half of it), -burst-writers goroutines each do
//     -burst-run back-to-back puts over the same keys, as devices reporting in a burst;
//   - renewals: every -renew-every (the first at half of it) the leader-election record at
//     /registry/leases/kube-system/kube-controller-manager is renewed as Kubernetes' lease
//     lock does it: a Txn comparing the key's mod_revision with the one this client last wrote,
//     then putting the record (else reading it back). A renewal waits for the one before (the
//     elector renews in a loop) but is timed from its scheduled moment;
//   - a watcher on /registry/ (opened before the preload) that must see every acknowledged write.
//
// Steady puts issued while a burst is running are classed apart (steady_in_burst) from the
// others (steady). Every request has a -timeout deadline; a class reports issued, acked and
// errors (issued is counted when a request is sent, the others when it ends, and the mix ends
// only when every request has ended), and the latency p50/p99/p999/max in ms. The watcher
// reports its events against the acknowledged writes: missing are acknowledged revisions it
// never saw, unexpected are events of revisions nobody acknowledged (e.g. a write that timed out
// here but was applied).
//
// With -wait, the mix prints {"phase":"preloaded"} and waits for a line on stdin before it
// starts, and prints {"phase":"done"} the moment every request has ended, before the watcher
// catches up and the results are printed: the caller measures the card between the two.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"math/rand"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/clientv3"
)

var (
	mode        = flag.String("mode", "mix", "mix, seq or inflight")
	endpoint    = flag.String("endpoint", "127.0.0.1:2379", "the server's client endpoint")
	duration    = flag.Duration("duration", 60*time.Second, "how long the load runs (mix, seq, inflight)")
	timeout     = flag.Duration("timeout", 30*time.Second, "deadline of one request")
	valueBytes  = flag.Int("value-bytes", 2048, "value size of the mix's puts (random bytes)")
	leaseBytes  = flag.Int("lease-bytes", 512, "size of the leader-election record")
	keys        = flag.Int("keys", 3000, "keys preloaded under /registry/")
	steadyRate  = flag.Float64("steady-rate", 50, "steady puts a second (open loop)")
	burstEvery  = flag.Duration("burst-every", 5*time.Second, "time between burst starts")
	burstWriter = flag.Int("burst-writers", 64, "goroutines in a burst")
	burstRun    = flag.Int("burst-run", 10, "back-to-back puts per burst goroutine")
	renewEvery  = flag.Duration("renew-every", 2*time.Second, "time between leader-election renewals")
	wait        = flag.Bool("wait", false, "mix: wait for a stdin line after the preload; print done when the load ended")
	inflight    = flag.Int("n", 1, "inflight: goroutines putting back to back")
	smallValue  = flag.Int("small-value-bytes", 128, "value size of seq and inflight puts")
	warmup      = flag.Duration("warmup", 300*time.Millisecond, "seq, inflight: untimed puts first")
	seed        = flag.Int64("seed", 1, "seed of the key choice (values are random regardless)")
)

// Kinds and their share of the preloaded keys, roughly a small cluster's object mix.
var kinds = []struct {
	name  string
	share float64
}{{"pods", 0.4}, {"configmaps", 0.15}, {"secrets", 0.15}, {"services", 0.1}, {"endpointslices", 0.1}, {"deployments", 0.1}}

const namespaces = 10
const leaderKey = "/registry/leases/kube-system/kube-controller-manager"

func emit(v interface{}) {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	os.Stdout.Write(append(b, '\n'))
}

func fatal(format string, a ...interface{}) {
	fmt.Fprintf(os.Stderr, "loadgen: "+format+"\n", a...)
	os.Exit(1)
}

// class counts one kind of request and keeps its latencies.
type class struct {
	name                  string
	issued, acked, errors int64
	mu                    sync.Mutex
	lat                   []float64
	firstErr              string
}

func (c *class) start() { atomic.AddInt64(&c.issued, 1) }

func (c *class) end(ms float64, err error) {
	if err != nil {
		atomic.AddInt64(&c.errors, 1)
		c.mu.Lock()
		if c.firstErr == "" {
			c.firstErr = err.Error()
		}
		c.mu.Unlock()
		return
	}
	atomic.AddInt64(&c.acked, 1)
	c.mu.Lock()
	c.lat = append(c.lat, ms)
	c.mu.Unlock()
}

func pct(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Floor(p * float64(len(sorted))))
	if i >= len(sorted) {
		i = len(sorted) - 1
	}
	return sorted[i]
}

func round3(x float64) float64 { return math.Round(x*1000) / 1000 }

func (c *class) report(extra map[string]interface{}) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := append([]float64(nil), c.lat...)
	sort.Float64s(s)
	m := map[string]interface{}{
		"class":  c.name,
		"issued": atomic.LoadInt64(&c.issued),
		"acked":  atomic.LoadInt64(&c.acked),
		"errors": atomic.LoadInt64(&c.errors),
		"p50":    round3(pct(s, 0.5)),
		"p99":    round3(pct(s, 0.99)),
		"p999":   round3(pct(s, 0.999)),
		"max":    round3(pct(s, 1)),
	}
	if c.firstErr != "" {
		m["firstError"] = c.firstErr
	}
	for k, v := range extra {
		m[k] = v
	}
	emit(m)
}

func msSince(t time.Time) float64 { return float64(time.Since(t).Nanoseconds()) / 1e6 }

func randomValue(n int) string {
	b := make([]byte, n)
	rand.Read(b) // the global source is safe for concurrent use
	return string(b)
}

// acked keeps the revision of every acknowledged write, for the watcher's accounting.
type ackedSet struct {
	mu   sync.Mutex
	revs map[int64]struct{}
	max  int64
}

func (a *ackedSet) add(rev int64) {
	a.mu.Lock()
	a.revs[rev] = struct{}{}
	if rev > a.max {
		a.max = rev
	}
	a.mu.Unlock()
}

// watcher counts every event under /registry/ from a start revision.
type watcher struct {
	mu         sync.Mutex
	revs       map[int64]struct{}
	events     int64
	maxRev     int64
	outOfOrder int64
	canceled   string
}

func (w *watcher) run(ctx context.Context, cli *clientv3.Client, from int64) {
	wc := cli.Watch(ctx, "/registry/", clientv3.WithPrefix(), clientv3.WithRev(from))
	for resp := range wc {
		w.mu.Lock()
		if resp.Canceled || resp.Err() != nil {
			if w.canceled == "" && ctx.Err() == nil {
				w.canceled = fmt.Sprint(resp.Err())
			}
		}
		for _, ev := range resp.Events {
			r := ev.Kv.ModRevision
			w.events++
			if r <= w.maxRev {
				w.outOfOrder++
			} else {
				w.maxRev = r
			}
			w.revs[r] = struct{}{}
		}
		w.mu.Unlock()
	}
}

func newClient() *clientv3.Client {
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{*endpoint}, DialTimeout: 10 * time.Second})
	if err != nil {
		fatal("connect %s: %v", *endpoint, err)
	}
	return cli
}

func preloadKeys() []string {
	out := make([]string, 0, *keys)
	for _, k := range kinds {
		n := int(math.Round(k.share * float64(*keys)))
		for i := 0; i < n && len(out) < *keys; i++ {
			out = append(out, fmt.Sprintf("/registry/%s/ns-%d/%s-%05d", k.name, i%namespaces, k.name, i))
		}
	}
	for i := 0; len(out) < *keys; i++ {
		out = append(out, fmt.Sprintf("/registry/pods/ns-%d/extra-%05d", i%namespaces, i))
	}
	return out
}

func mix() {
	cli := newClient()
	defer cli.Close()
	wcli := newClient()
	defer wcli.Close()
	ctx := context.Background()

	head, err := cli.Get(ctx, "/registry/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		fatal("first range: %v", err)
	}
	w := &watcher{revs: map[int64]struct{}{}}
	wctx, wcancel := context.WithCancel(ctx)
	wdone := make(chan struct{})
	go func() { w.run(wctx, wcli, head.Header.Revision+1); close(wdone) }()

	acked := &ackedSet{revs: map[int64]struct{}{}}
	put := func(c *class, key string, from time.Time) {
		c.start()
		rctx, cancel := context.WithTimeout(ctx, *timeout)
		resp, err := cli.Put(rctx, key, randomValue(*valueBytes))
		cancel()
		if err == nil {
			acked.add(resp.Header.Revision)
		}
		c.end(msSince(from), err)
	}

	// Preload, 64 in flight; a failed preload put fails the run.
	names := preloadKeys()
	pre := &class{name: "preload"}
	next := int64(-1)
	var pwg sync.WaitGroup
	for g := 0; g < 64; g++ {
		pwg.Add(1)
		go func() {
			defer pwg.Done()
			for {
				i := atomic.AddInt64(&next, 1)
				if i >= int64(len(names)) {
					return
				}
				put(pre, names[i], time.Now())
			}
		}()
	}
	pwg.Wait()
	if pre.errors > 0 {
		fatal("preload: %d of %d puts failed: %s", pre.errors, pre.issued, pre.firstErr)
	}

	// The leader-election record, created if absent.
	lease := &class{name: "lease_create"}
	lease.start()
	t := time.Now()
	cr, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(leaderKey), "=", 0)).
		Then(clientv3.OpPut(leaderKey, randomValue(*leaseBytes))).Else(clientv3.OpGet(leaderKey)).Commit()
	lease.end(msSince(t), err)
	if err != nil {
		fatal("leader record: %v", err)
	}
	var lastRev int64
	if cr.Succeeded {
		lastRev = cr.Header.Revision
		acked.add(lastRev)
	} else {
		lastRev = cr.Responses[0].GetResponseRange().Kvs[0].ModRevision
	}

	if *wait {
		acked.mu.Lock()
		rev := acked.max
		acked.mu.Unlock()
		emit(map[string]interface{}{"phase": "preloaded", "keys": len(names), "revision": rev})
		if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil {
			fatal("waiting for the start line: %v", err)
		}
	}

	steady := &class{name: "steady"}
	steadyInBurst := &class{name: "steady_in_burst"}
	burst := &class{name: "burst"}
	renewal := &class{name: "renewal"}
	var inBurst int64
	var wg sync.WaitGroup
	rng := rand.New(rand.NewSource(*seed))
	var rngMu sync.Mutex
	pick := func() string {
		rngMu.Lock()
		defer rngMu.Unlock()
		return names[rng.Intn(len(names))]
	}
	sleepUntil := func(at time.Time) { time.Sleep(time.Until(at)) }

	t0 := time.Now()
	end := t0.Add(*duration)
	var sched sync.WaitGroup
	bursts := 0
	renewals := 0

	// steady, open loop
	sched.Add(1)
	go func() {
		defer sched.Done()
		every := time.Duration(float64(time.Second) / *steadyRate)
		for i := 0; ; i++ {
			at := t0.Add(time.Duration(i) * every)
			if !at.Before(end) {
				return
			}
			sleepUntil(at)
			c := steady
			if atomic.LoadInt64(&inBurst) > 0 {
				c = steadyInBurst
			}
			key := pick()
			wg.Add(1)
			go func() { defer wg.Done(); put(c, key, at) }()
		}
	}()

	// bursts, each started on schedule whatever the one before is doing
	sched.Add(1)
	go func() {
		defer sched.Done()
		for b := 0; ; b++ {
			at := t0.Add(*burstEvery/2 + time.Duration(b)*(*burstEvery))
			if !at.Before(end) {
				return
			}
			sleepUntil(at)
			bursts++
			atomic.AddInt64(&inBurst, 1)
			var bw sync.WaitGroup
			for g := 0; g < *burstWriter; g++ {
				bw.Add(1)
				wg.Add(1)
				go func() {
					defer wg.Done()
					defer bw.Done()
					for r := 0; r < *burstRun; r++ {
						put(burst, pick(), time.Now())
					}
				}()
			}
			wg.Add(1)
			go func() { defer wg.Done(); bw.Wait(); atomic.AddInt64(&inBurst, -1) }()
		}
	}()

	// renewals: one after the other, each timed from its scheduled moment
	sched.Add(1)
	wg.Add(1)
	go func() {
		defer sched.Done()
		defer wg.Done()
		for k := 0; ; k++ {
			at := t0.Add(*renewEvery/2 + time.Duration(k)*(*renewEvery))
			if !at.Before(end) {
				return
			}
			sleepUntil(at)
			renewals++
			renewal.start()
			rctx, cancel := context.WithTimeout(ctx, *timeout)
			r, err := cli.Txn(rctx).If(clientv3.Compare(clientv3.ModRevision(leaderKey), "=", lastRev)).
				Then(clientv3.OpPut(leaderKey, randomValue(*leaseBytes))).Else(clientv3.OpGet(leaderKey)).Commit()
			cancel()
			if err == nil && !r.Succeeded {
				// someone else wrote the record: leadership lost, as the elector would see it
				lastRev = r.Responses[0].GetResponseRange().Kvs[0].ModRevision
				err = fmt.Errorf("renewal compare failed: the record was changed by someone else")
			} else if err == nil {
				lastRev = r.Header.Revision
				acked.add(lastRev)
			}
			renewal.end(msSince(at), err)
		}
	}()

	sched.Wait()
	wg.Wait()
	elapsed := time.Since(t0).Seconds()
	if *wait {
		emit(map[string]interface{}{"phase": "done"})
	}

	// the watcher catches up with the last acknowledged write, or gives up after 15 s
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		w.mu.Lock()
		caught := w.maxRev >= acked.max
		w.mu.Unlock()
		if caught {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	wcancel()
	<-wdone

	emit(map[string]interface{}{
		"phase": "config", "durationS": duration.Seconds(), "keys": len(names), "valueBytes": *valueBytes,
		"leaseBytes": *leaseBytes, "steadyRate": *steadyRate, "burstEveryS": burstEvery.Seconds(),
		"burstWriters": *burstWriter, "burstRun": *burstRun, "renewEveryS": renewEvery.Seconds(),
		"bursts": bursts, "renewals": renewals, "timeoutS": timeout.Seconds(),
	})
	pre.report(nil)
	steady.report(nil)
	steadyInBurst.report(nil)
	burst.report(nil)
	renewal.report(nil)

	acked.mu.Lock()
	w.mu.Lock()
	missing := 0
	for r := range acked.revs {
		if _, ok := w.revs[r]; !ok {
			missing++
		}
	}
	unexpected := 0
	for r := range w.revs {
		if _, ok := acked.revs[r]; !ok {
			unexpected++
		}
	}
	emit(map[string]interface{}{
		"class": "watch", "events": w.events, "ackedWrites": len(acked.revs), "missing": missing,
		"unexpected": unexpected, "outOfOrder": w.outOfOrder, "canceled": w.canceled,
		"firstRevision": head.Header.Revision + 1, "lastAckedRevision": acked.max,
	})
	w.mu.Unlock()
	acked.mu.Unlock()
	emit(map[string]interface{}{"phase": "end", "elapsedS": round3(elapsed)})
}

// flat: n goroutines putting small values back to back for the duration, after a warm-up.
func flat(n int) {
	cli := newClient()
	defer cli.Close()
	ctx := context.Background()
	value := randomValue(*smallValue)
	var i int64
	run := func(until time.Time, c *class) {
		var wg sync.WaitGroup
		for g := 0; g < n; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for time.Now().Before(until) {
					k := fmt.Sprintf("/bench/k%d", atomic.AddInt64(&i, 1)%10000)
					c.start()
					t := time.Now()
					rctx, cancel := context.WithTimeout(ctx, *timeout)
					_, err := cli.Put(rctx, k, value)
					cancel()
					c.end(msSince(t), err)
				}
			}()
		}
		wg.Wait()
	}
	run(time.Now().Add(*warmup), &class{name: "warmup"})
	c := &class{name: "put"}
	t0 := time.Now()
	run(t0.Add(*duration), c)
	elapsed := time.Since(t0).Seconds()
	c.report(map[string]interface{}{
		"inflight":  n,
		"elapsedS":  round3(elapsed),
		"opsPerSec": math.Round(float64(c.acked) / elapsed),
	})
}

func main() {
	flag.Parse()
	switch *mode {
	case "mix":
		mix()
	case "seq":
		flat(1)
	case "inflight":
		if *inflight < 1 {
			fatal("-n must be at least 1")
		}
		flat(*inflight)
	default:
		fatal("unknown -mode %q (mix, seq or inflight)", *mode)
	}
}
