package ratelimit

import (
	"regexp"
	"strings"
	"testing"
	"time"
)

func TestKey(t *testing.T) {
	secret := "AKIDz8krbsJ5yKBZQpn74WFkmLPx3EXAMPLE"
	k := Key(secret, "ap-guangzhou", "RunApplication")
	if k != Key(secret, "ap-guangzhou", "RunApplication") {
		t.Fatal("Key is not deterministic")
	}
	if strings.Contains(k, secret) || strings.Contains(k, secret[:8]) {
		t.Fatalf("Key %q exposes the account", k)
	}
	if !strings.HasPrefix(k, "ap-guangzhou.RunApplication.") {
		t.Fatalf("Key %q does not keep region and action readable", k)
	}
	natsKey := regexp.MustCompile(`^[-/_=\.a-zA-Z0-9]+$`) // nats.go's rule
	seen := map[string][3]string{}
	for _, in := range [][3]string{
		{secret, "ap-guangzhou", "RunApplication"},
		{secret, "ap-shanghai", "RunApplication"},
		{secret, "ap-guangzhou", "DescribeRunGroups"},
		{"other", "ap-guangzhou", "RunApplication"},
		{"", "", ""},
		{"a", "b c", "d"},
		{"a", "b.c", "d"}, // same readable part as "b c": the hash keeps them apart
		{"ab", "", "c"},
		{"a", "b", "c"},
		{"a", "", "bc"},
		{"x", "区域", "运行*>"},
		{"x", strings.Repeat("r", 100), strings.Repeat("a", 100)},
	} {
		k := Key(in[0], in[1], in[2])
		if !validKey.MatchString(k) || !natsKey.MatchString(k) {
			t.Errorf("Key%q = %q, not a valid KV key", in, k)
		}
		if len(k) > 32+1+32+1+32 {
			t.Errorf("Key%q = %q, too long", in, k)
		}
		if prev, dup := seen[k]; dup {
			t.Errorf("Key%q = Key%q = %q", in, prev, k)
		}
		seen[k] = in
	}
}

func TestConfigDefaults(t *testing.T) {
	c := Config{}.withDefaults()
	if c.Limit != 20 || c.Window != time.Second || c.Guard != 20*time.Millisecond || c.Burst != 1 ||
		c.Horizon != time.Second || c.MinRate != 1 || c.Decrease != 0.85 || c.Holdoff != time.Second ||
		c.Recovery != 15*time.Second || c.Bucket != "OMICSQ_RATELIMIT" || c.Replicas != 1 ||
		c.Logger == nil || c.Now == nil {
		t.Fatalf("defaults: %+v", c)
	}
	if err := c.validate(); err != nil {
		t.Fatalf("defaults invalid: %v", err)
	}
	p := c.params()
	if p.span != int64(1020*time.Millisecond) || p.maxRate != 20 || p.paceCap() != 20/1.02 {
		t.Fatalf("params: %+v", p)
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"negative limit", Config{Limit: -1}, "limit"},
		{"limit too big", Config{Limit: 1 << 16}, "limit"},
		{"negative window", Config{Window: -time.Second}, "window"},
		{"tiny guard", Config{Guard: time.Millisecond}, "guard"},
		{"burst above limit", Config{Burst: 21}, "burst"},
		{"negative horizon", Config{Horizon: -1}, "horizon"},
		{"min rate above max", Config{MinRate: 21}, "min rate"},
		{"decrease 1", Config{Decrease: 1}, "decrease"},
		{"negative holdoff", Config{Holdoff: -1}, "holdoff"},
		{"negative recovery", Config{Recovery: -1}, "recovery"},
		{"bucket with a dot", Config{Bucket: "A.B"}, "bucket"},
		{"replicas 7", Config{Replicas: 7}, "replicas"},
	} {
		err := tc.cfg.withDefaults().validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: validate() = %v, want an error about %s", tc.name, err, tc.want)
		}
	}
}
