#!/usr/bin/perl

# dato_publish_wait none | job, dato_publish_timeout, refused batches,
# clients that go away while they wait.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes ();
use DatoTest qw(ids_of hook ids_body post_req jobs_of);

my $t = DatoTest->with_mock(workers => 1, server => <<'EOF');
        location /none {
            dato_publish;
            dato_publish_wait none;
            dato_batch_window 2s;
        }

        location /job {
            dato_publish;
            dato_publish_wait job;
            dato_batch_window 200ms;
        }

        location /short {
            dato_publish;
            dato_publish_wait job;
            dato_batch_window 100ms;
            dato_publish_timeout 1s;
        }

        location /job2 {
            dato_publish;
            dato_publish_wait job;
            dato_batch_window 200ms;
            dato_batch_size 2;
        }

        location /slowwindow {
            dato_publish;
            dato_publish_wait job;
            dato_batch_window 1s;
        }
EOF

# every id whose webhook was answered 2xx (for the final promise check)
my %accepted;

###########################################################################
# wait none: answered at once, queued

{
    my ($id) = ids_of(100, 1);
    my $r = $t->post_json('/none', hook($id));
    is($r->{status}, 202, 'none: 202');
    ok($r->{elapsed} < 1, sprintf('none: answered at once (%.3f s, window 2 s)', $r->{elapsed}));
    is(($r->{json} || {})->{meta}{status}, 'queued', 'none: meta.status queued');
    is_deeply(($r->{json} || {})->{data}, [], 'none: data []');
    is(($r->{json} || {})->{meta}{records}, 1, 'none: meta.records 1');
    like($r->{headers}{'content-type'} // '', qr{^application/json}, 'none: JSON answer');
    $accepted{$id} = 1 if $r->{status} == 202;

    is(scalar($t->calls_for($id)), 0, 'none: not sent before the window');
    ok($t->wait_published(4, $id), 'none: the record is published after the window');
}

###########################################################################
# wait job: the job id of the call that carries the record

{
    my ($id) = ids_of(200, 1);
    my $r = $t->post_json('/job', hook($id));
    is($r->{status}, 202, 'job: 202') or diag $r->{body};
    $accepted{$id} = 1 if $r->{status} == 202;
    my $j = $r->{json} || {};
    is($j->{meta}{status}, 'accepted', 'job: meta.status accepted');
    is($j->{meta}{records}, 1, 'job: meta.records 1');
    my @jobs = jobs_of($r);
    is(scalar @jobs, 1, 'job: one job');
    my @calls = $t->calls_for($id);
    is(scalar @calls, 1, 'job: one call carries the record');
    is($jobs[0], $calls[0]{job}, "job: the answer's job is the mock's job for the call")
        if @calls && @jobs;
    like($jobs[0] // '', qr/^\d+\z/, 'job: a DatoCMS job id');
    ok($r->{elapsed} >= 0.15, sprintf('job: answered after the window (%.3f s)', $r->{elapsed}));
}

# a webhook whose records span two batches lists both jobs
{
    my @ids = ids_of(300, 3);
    my $r = $t->post_json('/job2', ids_body(@ids));
    is($r->{status}, 202, 'job, 2 batches: 202');
    $accepted{$_} = 1 for $r->{status} == 202 ? @ids : ();
    is(($r->{json} || {})->{meta}{records}, 3, 'job, 2 batches: meta.records 3');
    my @calls = $t->calls_for(@ids);
    is(scalar @calls, 2, 'job, 2 batches: two calls (batch size 2)');
    is_deeply([sort(jobs_of($r))], [sort map { $_->{job} } @calls],
              'job, 2 batches: both jobs listed');
}

###########################################################################
# dato_publish_timeout: 202 queued past it, the records go on

{
    my ($id) = ids_of(400, 1);
    $t->mock_faults({ delay_ms => 3000 });
    my $mark = $t->log_mark;
    my $r = $t->post_json('/short', hook($id));
    is($r->{status}, 202, 'timeout: 202') or diag $r->{body};
    $accepted{$id} = 1 if $r->{status} == 202;
    ok($r->{elapsed} >= 0.9 && $r->{elapsed} < 2,
       sprintf('timeout: answered after dato_publish_timeout (%.3f s)', $r->{elapsed}));
    my $j = $r->{json} || {};
    is($j->{meta}{status}, 'queued', 'timeout: meta.status queued');
    is($j->{meta}{records}, 1, 'timeout: meta.records 1');
    is_deeply($j->{data}, [], 'timeout: no job yet');

    ok($t->wait_published(3, $id), 'timeout: the mock still got the call');
    my ($c) = $t->calls_for($id);
    my $job = $c ? $c->{job} // '' : '';
    ok($t->wait_for_log(qr/records? sent, job "\Q$job\E"/, 5, $mark),
       'timeout: the module received the late answer');
    is(scalar($t->calls_for($id)), 1, 'timeout: the call was not repeated');
    $t->log_unlike(qr/\[alert\]/, 'timeout: no alert');
}

###########################################################################
# a refusal for good: 502 with DatoCMS's code, "gave up" naming the record

{
    my ($id) = ids_of(500, 1);
    $t->mock_faults({ status => 422, code => 'INVALID_FIELD' });
    my $r = $t->post_json('/job', hook($id));
    is($r->{status}, 502, '422: webhook answered 502') or diag $r->{body};
    like($r->{headers}{'content-type'} // '', qr{^application/json}, '422: JSON error');
    my $errs = ($r->{json} || {})->{errors};
    ok(ref $errs eq 'ARRAY' && @$errs, '422: errors array');
    my $txt = DatoTest::encode_json($r->{json} // {});
    ok((grep { ($_->{code} // '') eq 'INVALID_FIELD' } @{ $errs || [] }),
       '422: error carries the code INVALID_FIELD') or diag $txt;
    ok($t->wait_for_log(qr/\[error\].*gave up.*\Q$id\E/, 2),
       '422: error.log names the record as given up');
    $t->log_like(qr/\[error\].*gave up.*INVALID_FIELD.*\Q$id\E/, '422: with the code');
    is(scalar($t->calls_for($id)), 1, '422: not retried');
}

# every webhook waiting on a batch refused by an error that is not about
# its records gets 502 (one that is splits the batch: t/17-refused.t)
{
    my @ids = ids_of(600, 3);
    $t->mock_faults({ status => 422, code => 'INVALID_API_VERSION' });
    my @rs = $t->parallel_requests([ map { post_req('/slowwindow', hook($_)) } @ids ]);
    is(scalar(grep { $_->{status} == 502 && $_->{body} =~ /INVALID_API_VERSION/ } @rs), 3,
       '422 shared: the 3 waiting webhooks get 502 with the code')
        or diag join "\n", map { "$_->{status} $_->{body}" } @rs;
    is(scalar($t->calls_for(@ids)), 1, '422 shared: one call');
    for my $id (@ids) {
        $t->log_like(qr/\[error\].*gave up.*\Q$id\E/, "422 shared: $id given up in the log");
    }
}

###########################################################################
# the client goes away while it waits: the batch goes on

{
    my ($id1, $id2) = ids_of(700, 2);
    my $mark = $t->log_mark;

    # closed at once, before anything could be answered
    my $s = $t->raw_send('/slowwindow', hook($id1));
    ok($s, 'gone: connected');
    close $s;

    # closed while it waits for the batch window
    $s = $t->raw_send('/slowwindow', hook($id2));
    Time::HiRes::sleep(0.3);
    close $s;

    ok($t->wait_published(4, $id1, $id2), 'gone: the batch is still sent with both records');
    my @calls = $t->calls_for($id1, $id2);
    is(scalar @calls, 1, 'gone: in one call');
    ok($t->wait_for_log(qr/records? sent, job/, 2, $mark), 'gone: the answer was handled');
    my $gone = () = $t->error_log_since($mark) =~ /finalize request: 499/g;
    # the client that closed at once may be noticed only when its answer
    # is written, so the one that closed while waiting is the sure one
    cmp_ok($gone, '>=', 1, 'gone: nginx saw a client go while it waited (499)');
    $accepted{$_} = 1 for $id1, $id2;    # the module took them: they must not be lost

    my ($id3) = ids_of(800, 1);
    my $r = $t->post_json('/job', hook($id3));
    is($r->{status}, 202, 'gone: a later webhook still works');
    is((jobs_of($r))[0] // '', (map { $_->{job} } $t->calls_for($id3))[0] // 'none',
       'gone: with its job');
    $accepted{$id3} = 1 if $r->{status} == 202;
    $t->log_unlike(qr/\[alert\]|\[crit\]|signal/, 'gone: no alert, no crash');
}

###########################################################################
# the promise

{
    my @ids = sort keys %accepted;
    $t->wait_published(3, @ids);
    $t->promise_ok('whole file', @ids);
}

$t->done;
done_testing;
