#!/usr/bin/perl

# dato_publish_status: the JSON page and its Prometheus twin, counted
# across workers and reloads, checked by promtool, and never the token.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes ();
use DatoTest qw(ids_of hook post_req);

sub status_json {
    my ($tt) = @_;
    my $r = $tt->json_request(method => 'GET', path => '/status');
    return wantarray ? ($r->{json}, $r) : $r->{json};
}

# "name{labels}" => value for every sample; undef if a line does not parse
sub parse_prom {
    my ($text) = @_;
    my %s;
    for my $l (split /\n/, $text) {
        next if $l =~ /^#/ || $l eq '';
        my ($k, $v) = $l =~ /^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?) (\S+)$/
            or return undef;
        $s{$k} = $v;
    }
    return \%s;
}

sub status_prom {
    my ($tt) = @_;
    my $r = $tt->request(method => 'GET', path => '/status?format=prometheus');
    return wantarray ? (parse_prom($r->{body} // ''), $r) : parse_prom($r->{body} // '');
}

# every numeric leaf of the counters, "a.b.c" => n
sub leaves {
    my ($h, $prefix, $out) = @_;
    $out //= {};
    for my $k (keys %$h) {
        my $v = $h->{$k};
        my $p = defined $prefix ? "$prefix.$k" : $k;
        if (ref $v eq 'HASH') { leaves($v, $p, $out) }
        elsif (defined $v && !ref $v && $v =~ /^-?\d+\z/) { $out->{$p} = $v }
    }
    return $out;
}

###########################################################################
# two workers: one count

{
    my $t2 = DatoTest->with_mock(workers => 2, listen => 'reuseport',
                                 api_http => q{log_format p '$pid';},
                                 server => <<'EOF');
        location /hook {
            dato_publish;
            dato_publish_wait none;
            dato_batch_window 100ms;
            access_log %%TMP%%/pids.log p;
        }

        location /status {
            dato_publish_status;
        }
EOF

    my @reqs = map { post_req('/hook', hook($_)) } ids_of(1001, 40);
    my @res = $t2->parallel_requests(\@reqs, timeout => 15);
    is(scalar(grep { $_->{status} == 202 } @res), 40, 'workers: 40 webhooks answered 202');

    my %pids;
    $t2->wait_for(sub {
        my @l = split /\n/, $t2->read_file('pids.log') // '';
        return 0 if @l < 40;
        %pids = ();
        $pids{$_}++ for @l;
        return 1;
    }, 3);
    cmp_ok(scalar(keys %pids), '>=', 2, 'workers: both workers took webhooks')
        or diag explain \%pids;

    my $j = status_json($t2) || {};
    is($j->{webhooks}{received}, 40, 'workers: webhooks.received 40');
    is($j->{webhooks}{accepted}, 40, 'workers: webhooks.accepted 40');
    ok($t2->wait_for(sub { my $s = status_json($t2); $s && ($s->{records}{sent} // 0) >= 40 }, 5),
       'workers: records.sent reaches 40');
    $j = status_json($t2) || {};
    is($j->{records}{sent}, 40, 'workers: records.sent 40');
    my $p = status_prom($t2) || {};
    is($p->{dato_webhooks_received_total}, 40, 'workers: Prometheus says 40 too');

    # each worker answers the same page
    my @pages = map { status_json($t2) } 1 .. 6;
    is(scalar(grep { ($_->{webhooks}{received} // -1) == 40 } @pages), 6,
       'workers: every answer says 40');

    $t2->done;
}

###########################################################################
# one worker: a known sequence, exact counters

my $t = DatoTest->with_mock(workers => 1, mock => ['--job-polls', '0'],
                            server => <<'EOF');
        location /hook {
            dato_publish;
            dato_publish_wait job;
            dato_batch_window 100ms;
        }

        location /status {
            dato_publish_status;
        }
EOF

my ($json, $sr) = status_json($t);
is($sr->{status}, 200, 'status: 200');
is($sr->{headers}{'content-type'}, 'application/json', 'status: JSON by default');
ok(ref $json eq 'HASH', 'status: the body is a JSON object') or diag $sr->{body};
is(($json->{webhooks} || {})->{received}, 0, 'status: nothing received yet');

my @jobs;
{
    my ($a, $b, $c) = ids_of(10, 3);
    for my $id ($a, $b) {
        my $r = $t->post_json('/hook', hook($id));
        is($r->{status}, 202, 'sequence: accepted webhook 202') or diag $r->{raw};
        push @jobs, map { $_->{id} } @{ ($r->{json} || {})->{data} || [] };
    }
    is(scalar @jobs, 2, 'sequence: two jobs');

    my $r = $t->post_json('/hook', hook($c, entity_type => 'upload'));
    is($r->{status}, 200, 'sequence: ignored by entity_type 200');
    is(($r->{json} || {})->{meta}{status}, 'ignored', 'sequence: meta.status ignored');

    $r = $t->post_json('/hook', hook($c, event_type => 'publish', status => 'published'));
    is($r->{status}, 200, 'sequence: ignored by event_type 200');

    $r = $t->post_json('/hook', '{"foo":1}');
    is($r->{status}, 422, 'sequence: invalid webhook 422');

    $r = $t->request(method => 'GET', path => '/hook');
    is($r->{status}, 405, 'sequence: GET 405');

    $r = $t->request(method => 'POST', path => '/hook',
                     headers => { 'Content-Type' => 'text/plain' },
                     body => hook($c));
    is($r->{status}, 415, 'sequence: text/plain 415');
}

$json = status_json($t);
{
    my $w = $json->{webhooks} || {};
    is($w->{received}, 7, 'status: webhooks.received 7');
    is($w->{accepted}, 2, 'status: webhooks.accepted 2');
    is($w->{ignored}{entity_type}, 1, 'status: webhooks.ignored.entity_type 1');
    is($w->{ignored}{event_type}, 1, 'status: webhooks.ignored.event_type 1');
    is($w->{rejected}{422}, 1, 'status: webhooks.rejected.422 1');
    is($w->{rejected}{405}, 1, 'status: webhooks.rejected.405 1');
    is($w->{rejected}{415}, 1, 'status: webhooks.rejected.415 1');
    my %other = map { $_ => $w->{rejected}{$_} }
                grep { !/^(?:405|415|422)\z/ } keys %{ $w->{rejected} || {} };
    ok(!grep({ $_ != 0 } values %other), 'status: no other rejection counted')
        or diag explain \%other;
}
is($json->{records}{sent}, 2, 'status: records.sent 2');
is($json->{api_calls}{publish}{success}, 2, 'status: api_calls.publish.success 2');
is($json->{latency}{job_id}{count}, 2, 'status: latency.job_id.count 2');

ok($t->wait_for(sub { my $j = status_json($t); $j && ($j->{jobs}{done} // 0) >= 2 }, 5),
   'status: jobs.done reaches 2');
$json = status_json($t);
is($json->{jobs}{done}, 2, 'status: jobs.done 2');
is($json->{jobs}{failed}, 0, 'status: jobs.failed 0');
is($json->{jobs}{pending}, 0, 'status: jobs.pending 0');
is($json->{records}{published}, 2, 'status: records.published 2');
is($json->{records}{queued}, 0, 'status: records.queued 0');
is($json->{api_calls}{job_result}{success}, 2, 'status: api_calls.job_result.success 2');
is($json->{latency}{job_done}{count}, 2, 'status: latency.job_done.count 2');
is($json->{api_calls}{retries}, 0, 'status: no retries yet');
is($json->{last_api_error}, undef, 'status: no API error yet');
{
    my %last = map { ($_->{id} // '') => $_ } @{ $json->{last_jobs} || [] };
    for my $job (@jobs) {
        ok($last{$job}, "status: last_jobs has job $job") or next;
        is($last{$job}{records}, 1, "status: job $job: 1 record");
        is($last{$job}{status}, 200, "status: job $job: status 200");
        is($last{$job}{successful}, 1, "status: job $job: 1 successful");
        is($last{$job}{failed}, 0, "status: job $job: 0 failed");
    }
}

###########################################################################
# 429 and 500 from the API

{
    $t->mock_faults({ status => 429, reset => 1 });
    my ($id) = ids_of(20, 1);
    my $r = $t->post_json('/hook', hook($id));
    is($r->{status}, 202, '429: the webhook is still accepted after a retry')
        or diag $r->{raw};
    my $j = status_json($t);
    is($j->{api_calls}{publish}{rate_limited}, 1, '429: api_calls.publish.rate_limited 1');
    is($j->{api_calls}{retries}, 1, '429: api_calls.retries 1');
    is(($j->{last_api_error} || {})->{status}, 429, '429: last_api_error.status 429')
        or diag explain $j->{last_api_error};
    is(($j->{last_api_error} || {})->{code}, 'RATE_LIMIT_EXCEEDED',
       '429: last_api_error.code RATE_LIMIT_EXCEEDED');

    $t->mock_faults({ status => 500 });
    ($id) = ids_of(21, 1);
    $r = $t->post_json('/hook', hook($id));
    is($r->{status}, 202, '500: the webhook is still accepted after a retry')
        or diag $r->{raw};
    $j = status_json($t);
    is($j->{api_calls}{publish}{server_error}, 1, '500: api_calls.publish.server_error 1');
    is($j->{api_calls}{publish}{rate_limited}, 1, '500: rate_limited still 1');
    is($j->{api_calls}{retries}, 2, '500: api_calls.retries 2');
    is($j->{api_calls}{publish}{success}, 4, '500: api_calls.publish.success 4');
    is(($j->{last_api_error} || {})->{status}, 500, '500: last_api_error.status 500');
    is(($j->{last_api_error} || {})->{code}, 'INTERNAL_SERVER_ERROR',
       '500: last_api_error.code INTERNAL_SERVER_ERROR');
    like(($j->{last_api_error} || {})->{age_seconds} // '', qr/^\d+\z/,
         '500: last_api_error.age_seconds');

    ok($t->wait_for(sub { my $s = status_json($t); $s && ($s->{jobs}{done} // 0) >= 4 }, 5),
       'faults: their jobs finish too');
}

###########################################################################
# Prometheus, checked by promtool

{
    my $j = status_json($t);
    my ($p, $r) = status_prom($t);
    is($r->{status}, 200, 'prometheus: 200');
    like($r->{headers}{'content-type'} // '', qr{^text/plain\b}, 'prometheus: text/plain');
    ok($p, 'prometheus: every line is a comment or a sample') or diag $r->{body};
    $p //= {};
    my $body = $r->{body} // '';

    my $promtool = DatoTest::which('promtool');
    if ($promtool) {
        my $file = $t->write_file('metrics.txt', $body);
        my $out = `'$promtool' check metrics < '$file' 2>&1`;
        my $rc = $? >> 8;
        is($rc, 0, 'prometheus: promtool check metrics exits 0 (no errors, no lint problems)')
            or diag $out;
    } else {
        fail('prometheus: promtool is not installed: apt-get install prometheus'
             . ' (Debian package "prometheus" ships /usr/bin/promtool)');
    }

    my %same = (
        'dato_webhooks_received_total'                     => $j->{webhooks}{received},
        'dato_webhooks_accepted_total'                     => $j->{webhooks}{accepted},
        'dato_webhooks_ignored_total{reason="entity_type"}' => $j->{webhooks}{ignored}{entity_type},
        'dato_webhooks_ignored_total{reason="event_type"}'  => $j->{webhooks}{ignored}{event_type},
        'dato_webhooks_rejected_total{status="405"}'       => $j->{webhooks}{rejected}{405},
        'dato_webhooks_rejected_total{status="415"}'       => $j->{webhooks}{rejected}{415},
        'dato_webhooks_rejected_total{status="422"}'       => $j->{webhooks}{rejected}{422},
        'dato_records_sent_total'                          => $j->{records}{sent},
        'dato_records_published_total'                     => $j->{records}{published},
        'dato_api_calls_total{call="publish",outcome="success"}'      => $j->{api_calls}{publish}{success},
        'dato_api_calls_total{call="publish",outcome="rate_limited"}' => $j->{api_calls}{publish}{rate_limited},
        'dato_api_calls_total{call="publish",outcome="server_error"}' => $j->{api_calls}{publish}{server_error},
        'dato_api_retries_total'                           => $j->{api_calls}{retries},
        'dato_jobs_done_total'                             => $j->{jobs}{done},
        'dato_jobs_pending'                                => $j->{jobs}{pending},
        'dato_job_id_latency_seconds_count'                => $j->{latency}{job_id}{count},
        'dato_job_done_latency_seconds_count'              => $j->{latency}{job_done}{count},
    );
    for my $k (sort keys %same) {
        is($p->{$k}, $same{$k}, "prometheus: $k matches the JSON ($same{$k})");
    }
    is($p->{'dato_webhooks_received_total'}, 9, 'prometheus: 9 webhooks received');
    is($p->{'dato_job_id_latency_seconds_bucket{le="+Inf"}'},
       $p->{'dato_job_id_latency_seconds_count'}, 'prometheus: +Inf bucket = count');
    my $sum = $p->{'dato_job_id_latency_seconds_sum'};
    ok(defined $sum && abs($sum - $j->{latency}{job_id}{sum_ms} / 1000) < 0.5,
       'prometheus: _sum in seconds') or diag "sum $sum, JSON sum_ms $j->{latency}{job_id}{sum_ms}";
    like($body, qr/^# TYPE dato_webhooks_received_total counter$/m, 'prometheus: TYPE counter');
    like($body, qr/^# TYPE dato_job_done_latency_seconds histogram$/m,
         'prometheus: TYPE histogram');

    # the token is never shown
    my ($jj, $jr) = status_json($t);
    unlike($jr->{body} // '', qr/test-token/, 'JSON page does not show the token');
    unlike($body, qr/test-token/, 'Prometheus page does not show the token');
    unlike($jr->{raw} // '', qr/test-token/i, 'nor do its headers');
}

###########################################################################
# a reload keeps the counters

{
    my $before = leaves(scalar status_json($t));
    ok($t->reload, 'reload: done');
    my $after = leaves(scalar status_json($t));
    my @lost = grep { !/(?:queued|pending|pause_ms|age_seconds)$/
                      && ($after->{$_} // -1) < $before->{$_} } sort keys %$before;
    ok(%$before && !@lost, 'reload: no counter went down')
        or diag join "\n", map { "$_: $before->{$_} -> " . ($after->{$_} // 'undef') } @lost;
    is($after->{'webhooks.received'}, $before->{'webhooks.received'},
       "reload: webhooks.received still $before->{'webhooks.received'}");
    is($after->{'jobs.done'}, $before->{'jobs.done'}, 'reload: jobs.done kept');

    my ($id) = ids_of(30, 1);
    my $r = $t->post_json('/hook', hook($id));
    is($r->{status}, 202, 'reload: a webhook after it');
    my $later = leaves(scalar status_json($t));
    is($later->{'webhooks.received'}, $before->{'webhooks.received'} + 1,
       'reload: webhooks.received goes on from there');
    is($later->{'webhooks.accepted'}, $before->{'webhooks.accepted'} + 1,
       'reload: webhooks.accepted goes on from there');
    is($later->{'records.sent'}, $before->{'records.sent'} + 1,
       'reload: records.sent goes on from there');
    my $p = status_prom($t) || {};
    is($p->{dato_webhooks_received_total}, $later->{'webhooks.received'},
       'reload: the Prometheus page agrees');
}

$t->done;
done_testing;
