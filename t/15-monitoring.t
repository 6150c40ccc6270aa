#!/usr/bin/perl

# The monitoring that ships in contrib/ (issue 13): the Prometheus alerting
# rules pass "promtool check rules" and their unit tests
# (t/monitoring/dato-rules.test.yml); every metric that the Grafana
# dashboard and the rules name is in the module's real ?format=prometheus
# output; and, with the prometheus server installed, a local Prometheus
# scrapes a running nginx, evaluates every rule without an error, and
# answers every query of the dashboard with data.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use JSON::PP ();
use Time::HiRes ();
use DatoTest qw(ids_of ids_body);

my $promtool = DatoTest::which('promtool');

plan skip_all => 'promtool is not installed: apt-get install prometheus'
               . ' (Debian package "prometheus" ships /usr/bin/promtool)'
    unless $promtool;

my $REPO  = DatoTest::repo_root();
my $RULES = "$REPO/contrib/prometheus/dato-rules.yml";
my $DASH  = "$REPO/contrib/grafana/dato.json";
my $UNIT  = "$REPO/t/monitoring/dato-rules.test.yml";

sub sh_quote { my $s = shift; $s =~ s/'/'\\''/g; "'$s'" }

sub run_cmd {
    my $cmd = join ' ', map { sh_quote($_) } @_;
    my $out = `$cmd 2>&1`;
    return ($? == -1 ? 255 : $? >> 8, $out);
}

sub slurp {
    my ($path) = @_;
    open my $fh, '<', $path or die "$path: $!\n";
    local $/;
    return scalar <$fh>;
}

# the dato_* metric names an expression uses
sub names_in {
    my %n = map { $_ => 1 } $_[0] =~ /\b(dato_[a-z0-9_]+)/g;
    return keys %n;
}

###########################################################################
# the rules: promtool check rules, promtool test rules

my ($rc, $out) = run_cmd($promtool, 'check', 'rules', $RULES);
is($rc, 0, 'promtool check rules contrib/prometheus/dato-rules.yml') or diag $out;
like($out, qr/SUCCESS: \d+ rules found/, 'promtool finds the rules') or diag $out;

($rc, $out) = run_cmd($promtool, 'test', 'rules', $UNIT);
is($rc, 0, 'promtool test rules t/monitoring/dato-rules.test.yml: every alert'
           . ' fires when it should, and only then') or diag $out;

# the rules' expressions, and the alerts that the issue asks for
my $rules = slurp($RULES);
my @rule_exprs;
{
    my @l = split /\n/, $rules;
    for (my $i = 0; $i < @l; $i++) {
        next unless $l[$i] =~ /^(\s*)expr:\s*(.*)$/;
        my ($ind, $e) = (length $1, $2);
        if ($e eq '|' || $e eq '>-' || $e eq '>') {
            $e = '';
            $e .= "$l[$i]\n" while ++$i < @l && ($l[$i] =~ /^\s*$/
                                   || $l[$i] =~ /^\s{@{[$ind + 1]},}/);
            $i--;
        }
        push @rule_exprs, $e;
    }
}
my @alerts = $rules =~ /^\s*- alert:\s*(\S+)/mg;
is(scalar @rule_exprs, scalar @alerts, 'rules: one expression per alert');
for my $want (qw(DatoRecordsGivenUp DatoJobsFailed DatoApiRefusing
                 DatoApiUnreachable DatoApiPaused DatoQueueNearFull))
{
    ok((grep { $_ eq $want } @alerts), "rules: alert $want");
}

###########################################################################
# the dashboard: JSON, its panels and their queries

my $dash = eval { JSON::PP->new->decode(slurp($DASH)) };
ok(ref $dash eq 'HASH', 'contrib/grafana/dato.json is JSON') or diag $@;
$dash = {} unless ref $dash eq 'HASH';

my @panels = @{ $dash->{panels} || [] };
my @queries;        # [panel title, expr]
for my $p (@panels) {
    push @queries, map { [$p->{title}, $_->{expr}] }
                   grep { defined $_->{expr} } @{ $p->{targets} || [] };
}
ok(@queries > 0, 'dashboard: ' . scalar(@panels) . ' panels, '
                 . scalar(@queries) . ' queries');
ok(!(grep { !@{ $_->{targets} || [] } } @panels), 'dashboard: every panel has a query');

# what the issue asks for, found by the metrics the panels use
my %uses;
for my $q (@queries) { $uses{$_}{ $q->[0] } = 1 for names_in($q->[1]) }
for my $want (['records published per second', 'dato_records_published_total'],
              ['queue', 'dato_records_queued'],
              ['API calls by outcome', 'dato_api_calls_total'],
              ['429 pauses', 'dato_rate_limit_pause_seconds'],
              ['budget left', 'dato_rate_limit_remaining_calls'],
              ['budget planned', 'dato_rate_limit_calls'],
              ['job-ID latency histogram', 'dato_job_id_latency_seconds_bucket'],
              ['job-done latency histogram', 'dato_job_done_latency_seconds_bucket'],
              ['records given up', 'dato_records_given_up_total'])
{
    ok($uses{ $want->[1] }, "dashboard: $want->[0] ($want->[1])");
}
ok((grep { $_->[1] =~ /outcome="rate_limited"/ } @queries), 'dashboard: 429s counted');

my @template = map { $_->{definition} // '' } @{ ($dash->{templating} || {})->{list} || [] };

# Grafana's variables, as a query would have them
sub grafana_expr {
    my ($e) = @_;
    $e =~ s/\$__rate_interval/10s/g;
    $e =~ s/\$__range/1m/g;
    $e =~ s/\$instance/.*/g;
    return $e;
}

# every query parses: promtool checks them as recording rules
{
    my $i = 0;
    my $y = "groups:\n  - name: dashboard\n    rules:\n";
    for my $q (@queries) {
        (my $e = grafana_expr($q->[1])) =~ s/'/''/g;
        $i++;
        $y .= "      - record: dashboard:query_$i\n        expr: '$e'\n";
    }
    my $scratch = DatoTest->new;
    my $file = $scratch->write_file('dashboard-rules.yml', $y);
    ($rc, $out) = run_cmd($promtool, 'check', 'rules', $file);
    is($rc, 0, "dashboard: promtool parses all $i queries") or diag $out;
}

###########################################################################
# the metric names, against a running nginx's real page

my $t = DatoTest->with_mock(workers => 2,
                            api_http => q{dato_queue_size 500;},
                            server => <<'EOF');
        location /hook {
            dato_publish;
            dato_publish_wait result;
        }

        location /status {
            dato_publish_status;
        }
EOF

# published and followed to their jobs' end: counters and both histograms
# get samples; then a 429, retried
for my $k (0 .. 2) {
    my $r = $t->post_json('/hook', ids_body(ids_of(100 + 10 * $k, 3)), timeout => 15);
    is($r->{status}, 200, "webhook $k: 200, its job done") or diag $r->{raw};
}
$t->mock_faults({ status => 429, reset => 1 });
my $r = $t->post_json('/hook', ids_body(ids_of(200, 1)), timeout => 15);
is($r->{status}, 200, 'a webhook after a 429: 200') or diag $r->{raw};

$r = $t->request(path => '/status?format=prometheus');
is($r->{status}, 200, 'status page, format=prometheus: 200');
my $page = $r->{body} // '';
my %samples;
for my $l (split /\n/, $page) {
    next if $l =~ /^#/ || $l eq '';
    my ($name, $labels, $v) = $l =~ /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$/
        or next;
    $samples{$name} += $v;
}
ok($samples{dato_job_id_latency_seconds_count}, 'the page: job-ID latency has samples');
ok($samples{dato_job_done_latency_seconds_count}, 'the page: job-done latency has samples');
like($page, qr/^dato_api_calls_total\{call="publish",outcome="rate_limited"\} [1-9]/m,
     'the page: the 429 is counted');
like($page, qr/^dato_records_queue_capacity 1000$/m,
     'the page: capacity is dato_queue_size 500 times 2 workers');

{
    my %missing;
    for my $e ((map { $_->[1] } @queries), @template) {
        $missing{$_}{dashboard} = 1 for grep { !exists $samples{$_} } names_in($e);
    }
    for my $e (@rule_exprs) {
        $missing{$_}{rules} = 1 for grep { !exists $samples{$_} } names_in($e);
    }
    my @used = (map { names_in($_->[1]) } @queries), map { names_in($_) } @rule_exprs;
    ok(@used && !%missing, 'every metric that the dashboard and the rules use is on'
                           . ' the page (' . scalar(keys %{ { map { $_ => 1 } @used } })
                           . ' names)')
        or diag join "\n", map { "$_ (" . join(', ', sort keys %{ $missing{$_} }) . ')' }
                           sort keys %missing;
}

###########################################################################
# a local Prometheus: the rules evaluate, the dashboard's queries answer

SKIP: {
    my $prometheus = DatoTest::which('prometheus');
    skip 'the prometheus server is not installed (Debian package "prometheus"):'
         . ' the queries are not run against a live Prometheus', 4
        unless $prometheus;

    my $pport = DatoTest::free_port();
    my $tmp = $t->tmpdir;
    my $port = $t->port;
    $t->write_file('prometheus.yml', <<"EOF");
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - $RULES
scrape_configs:
  - job_name: dato
    metrics_path: /status
    params: { format: [prometheus] }
    static_configs:
      - targets: ['127.0.0.1:$port']
EOF
    my $pid = DatoTest::spawn([ $prometheus, "--config.file=$tmp/prometheus.yml",
                                "--storage.tsdb.path=$tmp/prometheus-data",
                                "--web.listen-address=127.0.0.1:$pport",
                                '--log.level=warn' ],
                              "$tmp/prometheus.log");
    DatoTest::track($pid, 'prometheus');

    my $api = sub {
        my ($path, %q) = @_;
        my $qs = join '&', map {
            (my $v = $q{$_}) =~ s/([^A-Za-z0-9_.~-])/sprintf '%%%02X', ord $1/ge;
            "$_=$v";
        } sort keys %q;
        my $res = $t->request(port => $pport, path => $path . ($qs ? "?$qs" : ''),
                              timeout => 5);
        return undef unless ($res->{status} // 0) == 200;
        return eval { JSON::PP->new->decode($res->{body}) };
    };

    # ten scrapes or so: enough for rate() over 10s
    my $ready = $t->wait_for(sub {
        my $d = $api->('/api/v1/query', query => 'count_over_time(dato_info[20s])');
        my $v = $d && $d->{data}{result}[0] ? $d->{data}{result}[0]{value}[1] : 0;
        return $v >= 10;
    }, 40, 0.5);
    ok($ready, 'prometheus scrapes the status page')
        or diag slurp("$tmp/prometheus.log");

    # one more webhook between the scrapes, so that rates are not all 0
    $t->post_json('/hook', ids_body(ids_of(300, 2)), timeout => 15);
    Time::HiRes::sleep(2.5);

    my @empty;
    for my $q (@queries) {
        my $d = $api->('/api/v1/query', query => grafana_expr($q->[1]));
        push @empty, "$q->[0]: $q->[1]"
            unless $d && ($d->{status} // '') eq 'success' && @{ $d->{data}{result} || [] };
    }
    ok($ready && !@empty, 'every query of the dashboard answers with data ('
                          . scalar(@queries) . ' queries)')
        or diag join "\n", @empty;

    my $d = $api->('/api/v1/series', 'match[]' => 'dato_info');
    ok($d && @{ $d->{data} || [] } && defined $d->{data}[0]{instance},
       'the dashboard\'s instance variable: dato_info has an instance label');

    # the rules are evaluated every second: each without an error
    my $ok = $t->wait_for(sub {
        my $d = $api->('/api/v1/rules');
        my @r = map { @{ $_->{rules} || [] } } @{ ($d && $d->{data}{groups}) || [] };
        return @r == @alerts && !grep { ($_->{health} // '') ne 'ok' } @r;
    }, 10, 0.5);
    my $rd = $api->('/api/v1/rules');
    ok($ok, 'prometheus evaluates all ' . scalar(@alerts) . ' rules, health "ok"')
        or diag explain $rd;

    kill 'TERM', $pid;
    DatoTest::wait_pid($pid, 10) // DatoTest::kill_hard($pid, 1);
    DatoTest::untrack($pid);
}

$t->done;
done_testing;
