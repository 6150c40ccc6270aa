#!/usr/bin/perl

# Retries (issue 3): 429 with X-RateLimit-Reset, 5xx JSON and HTML,
# transient 422, connection reset, API timeout, dato_retry_timeout,
# an API that is down for a while.  Every accepted id reaches the mock with
# a 202 or is named in a "gave up" error.log line.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes ();
use DatoTest qw(ids_of hook jobs_of);

my $t = DatoTest->with_mock(workers => 1, server => <<'EOF');
        location /r {
            dato_publish;
            dato_publish_wait job;
            dato_batch_window 100ms;
            dato_publish_timeout 5s;
        }

        location /slow {
            dato_publish;
            dato_publish_wait job;
            dato_batch_window 100ms;
            dato_api_timeout 1s;
            dato_publish_timeout 6s;
        }

        location /short {
            dato_publish;
            dato_publish_wait job;
            dato_batch_window 100ms;
            dato_publish_timeout 1s;
        }

        location /down {
            dato_publish;
            dato_publish_wait job;
            dato_batch_window 100ms;
            dato_publish_timeout 7s;
        }

        location /giveup {
            dato_publish;
            dato_publish_wait job;
            dato_batch_window 100ms;
            dato_retry_timeout 2s;
            dato_publish_timeout 7s;
        }
EOF

###########################################################################
# helpers

my %accepted;

# one fault, one webhook to /r; the batch is retried and then published
sub retried_ok {
    my ($name, $id, $fault, %o) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;

    my $mark = $t->log_mark;
    $t->mock_faults($fault);
    my $r = $t->post_json($o{path} // '/r', hook($id), timeout => 15);
    is($r->{status}, 202, "$name: webhook answered 202") or diag $r->{body} // $r->{error};
    $accepted{$id} = 1 if $r->{status} == 202;
    is(($r->{json} || {})->{meta}{status}, 'accepted', "$name: meta.status accepted");

    my @calls = $t->calls_for($id);
    ok(@calls >= 2, "$name: the call was retried (" . scalar(@calls) . ' calls)');
    is($calls[0]{status}, $o{first_status} // $fault->{status},
       "$name: first call got the fault")
        if @calls;
    is($calls[-1]{status}, 202, "$name: last call accepted") if @calls;
    is_deeply([map { $_->{ids} } @calls], [map { [$id] } @calls],
              "$name: every attempt carries the same batch");
    my @jobs = jobs_of($r);
    is_deeply(\@jobs, [@calls ? $calls[-1]{job} // 'none' : 'none'],
              "$name: the answer names the job of the accepted call");
    ok($t->error_log_since($mark) =~ /\[warn\].*bulk publish of 1 record failed.*retrying/,
         "$name: the retry is logged");
    $t->promise_ok($name, $id);
    return ($r, @calls);
}

###########################################################################
# 429 with X-RateLimit-Reset: 1

{
    my ($id) = ids_of(100, 1);
    my ($r, @calls) = retried_ok('429', $id, { status => 429, reset => 1 });
    if (@calls >= 2) {
        my $gap = $calls[1]{t} - $calls[0]{t};
        ok($gap >= 0.95, sprintf('429: retried after X-RateLimit-Reset (%.3f s)', $gap));
        ok($gap < 3, '429: but not much later');
    } else {
        fail('429: retry gap');
    }
    $t->log_like(qr/\[warn\].*failed \(429 RATE_LIMIT_EXCEEDED\), retrying in \d+ ms/,
                 '429: logged with the code');
}

###########################################################################
# 500 JSON, 502 HTML, 503, transient 422

retried_ok('500', (ids_of(200, 1))[0], { status => 500 });

{
    my ($id) = ids_of(210, 1);
    retried_ok('502 html', $id, { status => 502, html => JSON::PP::true });
    $t->log_like(qr/failed \(502 NON_JSON_ANSWER\), retrying/,
                 '502 html: an HTML page is a transient failure');
}

retried_ok('503', (ids_of(220, 1))[0], { status => 503 });

retried_ok('transient 422', (ids_of(230, 1))[0],
           { status => 422, code => 'BATCH_DATA_VALIDATION_IN_PROGRESS',
             transient => JSON::PP::true });
$t->log_like(qr/failed \(422 BATCH_DATA_VALIDATION_IN_PROGRESS\), retrying/,
             'transient 422: retried, not given up');

# several faults in a row for one batch
{
    my ($id) = ids_of(240, 1);
    $t->mock_faults([{ status => 500 }, { status => 503 }, { status => 502, html => JSON::PP::true }]);
    my $r = $t->post_json('/r', hook($id), timeout => 15);
    is($r->{status}, 202, '3 faults: webhook answered 202');
    $accepted{$id} = 1 if $r->{status} == 202;
    my @calls = $t->calls_for($id);
    is_deeply([map { $_->{status} } @calls], [500, 503, 502, 202], '3 faults: 4 attempts');
    if (@calls == 4) {
        my @gap = map { $calls[$_]{t} - $calls[$_ - 1]{t} } 1 .. 3;
        ok($gap[2] > $gap[0], sprintf('3 faults: the backoff grows (%.3f, %.3f, %.3f s)', @gap));
    } else {
        fail('3 faults: backoff');
    }
    is_deeply([jobs_of($r)], [@calls ? $calls[-1]{job} // 'none' : 'none'], '3 faults: job');
    $t->promise_ok('3 faults', $id);
}

###########################################################################
# connection reset: no answer at all
#
# On a reused keep-alive connection libcurl itself sends the request once
# more on a fresh connection when the first one dies without an answer, so
# a single reset may never reach the module; two in a row do.

sub reset_ok {
    my ($name, $id, @faults) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    my $mark = $t->log_mark;
    $t->mock_faults(\@faults);
    my $r = $t->post_json('/r', hook($id), timeout => 15);
    is($r->{status}, 202, "$name: webhook answered 202") or diag $r->{body} // $r->{error};
    $accepted{$id} = 1 if $r->{status} == 202;
    is(($r->{json} || {})->{meta}{status}, 'accepted', "$name: meta.status accepted");
    my @calls = $t->calls_for($id);
    is_deeply([map { $_->{status} } @calls], [(0) x @faults, 202],
              "$name: each dropped call was sent again");
    is_deeply([jobs_of($r)], [@calls ? $calls[-1]{job} // 'none' : 'none'],
              "$name: the answer names the job of the accepted call");
    $t->promise_ok($name, $id);
    return ($r, $mark, @calls);
}

reset_ok('one reset', (ids_of(300, 1))[0], { rst => JSON::PP::true });

{
    my ($r, $mark) = reset_ok('two resets', (ids_of(305, 1))[0],
                              { rst => JSON::PP::true }, { rst => JSON::PP::true });
    ok($t->error_log_since($mark) =~ qr/\[warn\].*failed \(0 .+\), retrying/,
         'two resets: the module retried the failed call');
}

# closed after processing: the job exists but its answer is lost
{
    my ($r, $mark) = reset_ok('close after processing', (ids_of(310, 1))[0],
                              { close => JSON::PP::true, process => JSON::PP::true },
                              { close => JSON::PP::true, process => JSON::PP::true });
    ok($t->error_log_since($mark) =~ qr/\[warn\].*failed \(0 .+\), retrying/,
         'close after processing: the module retried the failed call');
}

###########################################################################
# the API does not answer within dato_api_timeout

{
    my ($id) = ids_of(400, 1);
    my $mark = $t->log_mark;
    $t->mock_faults({ delay_ms => 2500 });
    my $r = $t->post_json('/slow', hook($id), timeout => 15);
    is($r->{status}, 202, 'api timeout: webhook answered 202') or diag $r->{body};
    $accepted{$id} = 1 if $r->{status} == 202;
    ok($r->{elapsed} >= 1, sprintf('api timeout: after the 1 s timeout (%.3f s)', $r->{elapsed}));
    ok($r->{elapsed} < 2.4, 'api timeout: the module did not wait for the slow answer');
    my @calls = $t->calls_for($id);
    ok(@calls >= 2, 'api timeout: the call was repeated');
    my @jobs = jobs_of($r);
    ok(@calls >= 2 && @jobs == 1 && $jobs[0] eq ($calls[-1]{job} // '')
       && $jobs[0] ne ($calls[0]{job} // ''),
       'api timeout: the job is the one of the later call');
    ok($t->error_log_since($mark) =~ /\[warn\].*failed \(0 .*[Tt]ime.*\), retrying/,
         'api timeout: logged as a timeout and retried');
    $t->promise_ok('api timeout', $id);
}

###########################################################################
# retries outlast dato_publish_timeout: 202 queued, published later

{
    my ($id) = ids_of(500, 1);
    $t->mock_faults([{ status => 500 }, { status => 500 }, { status => 500 }]);
    my $r = $t->post_json('/short', hook($id), timeout => 15);
    is($r->{status}, 202, 'outlast: webhook answered 202');
    is(($r->{json} || {})->{meta}{status}, 'queued', 'outlast: meta.status queued');
    ok($r->{elapsed} >= 0.9 && $r->{elapsed} < 2,
       sprintf('outlast: answered at dato_publish_timeout (%.3f s)', $r->{elapsed}));
    $accepted{$id} = 1 if $r->{status} == 202;
    ok($t->wait_published(6, $id), 'outlast: the record is published later');
    is_deeply([map { $_->{status} } $t->calls_for($id)], [500, 500, 500, 202],
              'outlast: after three failures');
    $t->promise_ok('outlast', $id);
}

###########################################################################
# the API is down for 2 s, then up again

{
    my ($id) = ids_of(600, 1);
    my $mark = $t->log_mark;
    my $before = () = $t->calls_for($id);
    $t->mock_config({ down_ms => 2000 });
    my $t0 = Time::HiRes::time();
    my $r = $t->post_json('/down', hook($id), timeout => 15);
    is($r->{status}, 202, 'down: webhook answered 202') or diag $r->{body} // $r->{error};
    $accepted{$id} = 1 if $r->{status} == 202;
    is(($r->{json} || {})->{meta}{status}, 'accepted', 'down: meta.status accepted');
    ok(Time::HiRes::time() - $t0 >= 1.8,
       sprintf('down: published once the API is back (%.3f s)', Time::HiRes::time() - $t0));
    my @calls = $t->calls_for($id);
    is(scalar(grep { $_->{status} == 202 } @calls), 1, 'down: one accepted call');
    is_deeply([jobs_of($r)], [@calls ? $calls[-1]{job} // 'none' : 'none'], 'down: its job');
    ok($t->error_log_since($mark) =~ qr/\[warn\].*failed \(0 .+\), retrying/,
         'down: connection failures retried');
    $t->promise_ok('down', $id);
}

###########################################################################
# dato_retry_timeout 2s with nothing but 500s: gives up

{
    my ($id) = ids_of(700, 1);
    my $mark = $t->log_mark;
    $t->mock_faults([ map { { status => 500 } } 1 .. 10 ]);
    my $r = $t->post_json('/giveup', hook($id), timeout => 15);
    ok($r->{status} == 502
       || ($r->{status} == 202 && (($r->{json} || {})->{meta}{status} // '') eq 'queued'),
       "give up: webhook answered 502 (or 202 queued): $r->{status}") or diag $r->{body};
    is($r->{status}, 502, 'give up: it was still waiting, so 502');
    like($r->{body} // '', qr/INTERNAL_SERVER_ERROR/, "give up: with DatoCMS's code");
    ok($r->{elapsed} < 3, sprintf('give up: within dato_retry_timeout (%.3f s)', $r->{elapsed}));
    ok($t->wait_for_log(qr/\[error\].*gave up.*dato_retry_timeout.*\Q$id\E/, 3, $mark),
       'give up: error.log names the record and the reason');
    my @calls = $t->calls_for($id);
    ok(@calls >= 2 && !grep({ $_->{status} != 500 } @calls),
       'give up: ' . scalar(@calls) . ' attempts, all 500');
    Time::HiRes::sleep(1);
    my $after = () = $t->calls_for($id);
    is($after, scalar(@calls), 'give up: no attempt after giving up');
    ok($calls[-1]{t} - $calls[0]{t} <= 2.1, 'give up: attempts within dato_retry_timeout')
        if @calls;
    $accepted{$id} = 1 if $r->{status} == 202;
    $t->promise_ok('give up', $id);
}

###########################################################################
# the promise, over the whole file

{
    my @ids = sort keys %accepted;
    $t->promise_ok('whole file', @ids);
}

$t->done;

###########################################################################
# no free connection for a call (worker_connections): the call fails to
# connect and is retried; curl's multi handle goes on for later calls

{
    # the listening socket, the master's channel, the exit watcher and the
    # webhook take the 4: the call has none while the webhook waits
    my $w = DatoTest->new(workers => 1);
    $w->start_mock;
    $w->run(worker_connections => 4, http => DatoTest::api_conf(server => <<'EOF'));
        location /hook {
            dato_publish;
            dato_publish_timeout 1s;
            dato_job_poll off;
        }
EOF
    $w->allow_log(qr/worker_connections are not enough/);

    my ($id) = ids_of(950_000, 1);
    my $r = $w->json_request(method => 'POST', path => '/hook',
                             body => DatoTest::ids_body($id),
                             headers => DatoTest::json_headers('Connection' => 'close'),
                             timeout => 10);
    is($r->{status}, 202, 'no connection: the webhook answered 202 (queued)');
    ok($w->wait_published(10, $id), 'no connection: published once one is free');
    $w->log_like(qr/\[warn\].*bulk publish of 1 record failed \(0 Couldn't connect/,
                 'no connection: the call failed to connect, and was retried');
    is(scalar($w->gave_up_lines), 0, 'no connection: nothing given up');
    $w->log_unlike(qr/curl_multi_socket_action\(\) failed/,
                   'no connection: curl\'s multi handle did not fail');
    $w->done;
}

done_testing;