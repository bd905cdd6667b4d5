package console_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"

	"github.com/omicsq/omicsq/client"
)

// browser starts headless Chromium (Debian's chromium package, installed
// by .ci/run) sending the console's token with every request. Without a
// browser the test is skipped, unless OMICSQ_REQUIRE_BROWSER=1 (CI) makes
// that a failure.
func browser(t *testing.T) context.Context {
	t.Helper()
	var path string
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			path = p
			break
		}
	}
	if path == "" {
		if os.Getenv("OMICSQ_REQUIRE_BROWSER") == "1" {
			t.Fatal("no chromium on PATH and OMICSQ_REQUIRE_BROWSER=1: install Debian's chromium package")
		}
		t.Skip("no chromium on PATH (apt-get install --no-install-recommends chromium)")
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(path), chromedp.NoSandbox,
		chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(1280, 900),
		// The machine's network is closed: without these Chromium keeps
		// trying to reach Google's services.
		chromedp.Flag("disable-background-networking", true), chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true), chromedp.Flag("disable-quic", true))
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	bctx, cancelBrowser := chromedp.NewContext(actx)
	t.Cleanup(func() { cancelBrowser(); cancelAlloc() })
	if _, err := chromedp.Call(bctx, network.Enable, network.EnableParams{}); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	if _, err := chromedp.Call(bctx, network.SetExtraHTTPHeaders, network.SetExtraHTTPHeadersParams{Headers: network.Headers{"Authorization": "Bearer " + token}}); err != nil {
		t.Fatalf("chromium: %v", err)
	}
	return bctx
}

// screenshots go to docs/img with UPDATE_SCREENSHOTS=1 (the README shows
// them), else to a temporary directory.
func screenshotDir(t *testing.T) string {
	if os.Getenv("UPDATE_SCREENSHOTS") == "1" {
		return filepath.Join("..", "..", "docs", "img")
	}
	return t.TempDir()
}

// page drives one tab, failing the test at the first error.
type page struct {
	t     *testing.T
	ctx   context.Context
	shots string
}

// within runs a with a 30 s bound (the browser lives on the parent).
func within[T any](p page, what string, a chromedp.Action[T]) T {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, 30*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, a)
	if err != nil {
		p.t.Fatalf("%s: %v", what, err)
	}
	return v
}

func (p page) do(what string, steps ...chromedp.Action[chromedp.Void]) {
	p.t.Helper()
	within(p, what, chromedp.Steps(steps...))
}

func (p page) text(sel string) string {
	p.t.Helper()
	return within(p, "read "+sel, chromedp.Text(chromedp.CSS(sel)))
}

func (p page) eval(expr string) int {
	p.t.Helper()
	return within(p, "evaluate "+expr, chromedp.Evaluate[int](expr))
}

func (p page) shot(name string) {
	p.t.Helper()
	png := within(p, "screenshot "+name, chromedp.FullScreenshot(100))
	if err := os.WriteFile(filepath.Join(p.shots, "console-"+name+".png"), png, 0o644); err != nil {
		p.t.Fatal(err)
	}
}

// waitFor evaluates expr until it is true. It polls from Go rather than
// in the page, so a navigation (a form posted) does not end the wait.
func (p page) waitFor(expr string) {
	p.t.Helper()
	var err error
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		ctx, cancel := context.WithTimeout(p.ctx, 5*time.Second)
		var ok bool
		ok, err = chromedp.Run(ctx, chromedp.Evaluate[bool](expr))
		cancel()
		if err == nil && ok {
			return
		}
	}
	p.t.Fatalf("waited 20s for %s (last error: %v)", expr, err)
}

// The operator's path at 02:00: the overview (updating live), the DLQ
// filtered down to one dead letter, its redrive previewed and carried
// out, and its result arriving, against two real worker replicas and the
// sandbox.
func TestConsoleInABrowser(t *testing.T) {
	e := newEnv(t, envOptions{workers: 2})
	for i := range 3 {
		e.waitOutcome(e.publish(fmt.Sprintf("S-%04d", i+1)))
	}
	e.deadLetter("S-0101")
	e.deadLetter("S-0102")
	e.waitIndexed(2)
	p := page{t: t, ctx: browser(t), shots: screenshotDir(t)}

	p.do("load the overview", chromedp.Navigate(e.url+"/"), chromedp.WaitVisible(chromedp.CSS("#consumers")))
	if c := p.text("#consumers"); !strings.Contains(c, "omicsq-worker") {
		t.Fatalf("overview's consumers table: %q", c)
	}
	p.eval(`window.__marker = 42`)
	e.deadLetter("S-0103")
	p.waitFor(`document.querySelector('[data-live=dead_letters]').textContent === "3"`)
	if p.eval(`window.__marker`) != 42 {
		t.Fatal("the overview was reloaded instead of updated")
	}
	p.shot("overview")

	p.do("the whole DLQ", chromedp.Navigate(e.url+"/dlq"), chromedp.WaitVisible(chromedp.CSS("#deadletters")))
	p.shot("dlq")
	p.do("filter the DLQ",
		chromedp.SetValue(chromedp.CSS(`#filter input[name=code]`), "InvalidParameterValue.InvalidInputJsonFormat"),
		chromedp.SetValue(chromedp.CSS(`#filter input[name=key]`), "S-0101"),
		chromedp.Click(chromedp.CSS("#apply")))
	p.waitFor(`location.search.includes("key=S-0101") && document.querySelector("#deadletters") !== null`)
	if n := p.eval(`document.querySelectorAll('#deadletters input[name=seq]').length`); n != 1 {
		t.Fatalf("the filtered DLQ page lists %d dead letters, want 1", n)
	}
	p.do("preview the redrive", chromedp.Click(chromedp.CSS(`#deadletters input[name=seq]`)),
		chromedp.Click(chromedp.CSS("#preview-selected")))
	p.waitFor(`document.querySelector("#plan") !== null`)
	if s := p.text("#summary"); !strings.Contains(s, "1 would be redriven") {
		t.Fatalf("preview: %q", s)
	}
	p.shot("preview")
	p.do("redrive", chromedp.Click(chromedp.CSS("#confirm")))
	p.waitFor(`document.title.includes("redriven")`)
	if s := p.text("#summary"); !strings.HasPrefix(s, "1 redriven") {
		t.Fatalf("redrive: %q", s)
	}

	// Its result arrives: submitted once, by the sandbox's own registry.
	var group string
	for deadline := time.Now().Add(30 * time.Second); group == "" && time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if o, ok, err := e.cl.Result(context.Background(), "S-0101"); err == nil && ok && o.Result != nil {
			group = o.Result.RunGroupID
		}
	}
	if group == "" {
		t.Fatal("no result for the redriven request")
	}
	if n := e.groupsNamed("S-0101"); n != 1 {
		t.Fatalf("the sandbox holds %d run groups for the redriven request, want 1", n)
	}
	p.do("see the result", chromedp.Navigate(e.url+"/requests?key=S-0101"), chromedp.WaitVisible(chromedp.CSS("#run-group")))
	if shown := p.text("#run-group"); shown != group {
		t.Fatalf("the request page shows run group %q, want %q", shown, group)
	}
	// The tracker follows the run to its end; the page lists its events.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(300 * time.Millisecond) {
		p.do("reload the request page", chromedp.Navigate(e.url+"/requests?key=S-0101"), chromedp.WaitVisible(chromedp.CSS("#run-group")))
		if p.eval(`document.querySelector("#events") ? document.querySelector("#events").textContent.includes("Succeeded") ? 1 : 0 : 0`) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the request page never listed the run's Succeeded event")
		}
	}
	p.shot("request")
	p.do("runs by status", chromedp.Navigate(e.url+"/runs?status=Succeeded"), chromedp.WaitVisible(chromedp.CSS("#runs")))
	if rows := p.text("#runs"); !strings.Contains(rows, group) {
		t.Fatalf("the runs page does not list %s as Succeeded:\n%s", group, rows)
	}
	// A sample sheet's batch, followed to its end on the batches page.
	const sheet = "enqueue-20261203T020000Z-5f3a9c"
	var members []client.BatchMember
	var reqs []client.Request
	for i := range 4 {
		key := fmt.Sprintf("S-02%02d", i)
		members = append(members, client.BatchMember{Key: key, Location: fmt.Sprintf("samples.csv:%d", i+2)})
		reqs = append(reqs, client.Request{Key: key, Body: body(key), Batch: sheet})
	}
	if err := e.cl.RegisterBatch(context.Background(), sheet, members); err != nil {
		t.Fatal(err)
	}
	if _, err := e.cl.PublishBatch(context.Background(), reqs); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(300 * time.Millisecond) {
		p.do("load the batches", chromedp.Navigate(e.url+"/batches"), chromedp.WaitVisible(chromedp.CSS("#batches")))
		if strings.Contains(p.text("#batches"), "complete") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the batch never showed complete: %s", p.text("#batches"))
		}
	}
	p.shot("batches")
	t.Logf("screenshots in %s", p.shots)
}
