#!/usr/bin/perl

# Batching: batch size, batch window, one call per target, several workers.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes ();
use DatoTest qw(ids_of hook ids_body post_req jobs_of);

my $t = DatoTest->new(workers => 1);
$t->start_mock;

my $http = <<'EOF';
    dato_api_url %%MOCK%%;
    dato_api_token test-token;

    server {
        listen 127.0.0.1:%%PORT%%;
        server_name localhost;

        location /job {
            dato_publish;
            dato_publish_wait job;
        }

        location /window1s {
            dato_publish;
            dato_publish_wait job;
            dato_batch_window 1s;
        }

        location /window1500 {
            dato_publish;
            dato_publish_wait none;
            dato_batch_window 1500ms;
        }

        location /size5 {
            dato_publish;
            dato_publish_wait none;
            dato_batch_size 5;
            dato_batch_window 10s;
        }

        location /size5short {
            dato_publish;
            dato_publish_wait none;
            dato_batch_size 5;
            dato_batch_window 1s;
        }

        location /a {
            dato_publish;
            dato_publish_wait none;
            dato_batch_window 1s;
        }

        location /b {
            dato_publish;
            dato_publish_wait none;
            dato_batch_window 1s;
        }

        location /env {
            dato_publish;
            dato_publish_wait job;
            dato_batch_window 1s;
        }
    }
EOF

$t->run(http => $http);

# every id whose webhook was answered 2xx (for the final promise check)
my %accepted;

###########################################################################
# 450 ids in one {"ids":[...]}: calls of 200, 200, 50

{
    my @ids = ids_of(1000, 450);
    my $r = $t->post_json('/job', ids_body(@ids));
    is($r->{status}, 202, '450 ids: 202') or diag $r->{body};
    $accepted{$_} = 1 for $r->{status} == 202 ? @ids : ();

    my @calls = $t->calls_for(@ids);
    is_deeply([sort { $b <=> $a } map { scalar @{ $_->{ids} } } @calls], [200, 200, 50],
              '450 ids: calls of 200, 200 and 50 ids');
    is(scalar(grep { $_->{status} == 202 } @calls), 3, '450 ids: all three calls accepted');

    my %union = map { $_ => 1 } map { @{ $_->{ids} } } @calls;
    is_deeply([sort keys %union], [sort @ids], '450 ids: union of the calls is the 450 ids');
    my $total = 0;
    $total += @{ $_->{ids} } for @calls;
    is($total, 450, '450 ids: no id sent twice');

    my $j = $r->{json} || {};
    is($j->{meta}{records}, 450, '450 ids: meta.records 450');
    is($j->{meta}{status}, 'accepted', '450 ids: meta.status accepted');
    my @jobs = jobs_of($r);
    my %distinct = map { $_ => 1 } @jobs;
    is(scalar(keys %distinct), 3, '450 ids: 3 distinct job ids in the answer');
    is_deeply([sort @jobs], [sort map { $_->{job} // 'none' } @calls],
              '450 ids: the answer lists the jobs the mock created');
}

###########################################################################
# 50 concurrent webhooks inside a 1 s window: one call, one job

{
    my @ids = ids_of(2000, 50);
    my @rs = $t->parallel_requests([ map { post_req('/window1s', hook($_)) } @ids ]);
    $_->{json} = eval { DatoTest::decode_json($_->{body}) } for @rs;

    is(scalar(grep { $_->{status} == 202 } @rs), 50, '50 webhooks: all answered 202')
        or diag join "\n", map { "$_->{status} " . ($_->{error} // $_->{body} // '') } @rs;
    for my $k (0 .. $#rs) { $accepted{ $ids[$k] } = 1 if $rs[$k]{status} == 202 }

    my @calls = $t->calls_for(@ids);
    is(scalar @calls, 1, '50 webhooks: exactly one bulk call');
    is_deeply([sort @{ $calls[0]{ids} || [] }], [sort @ids], '50 webhooks: the call has all 50 ids');

    my %jobs;
    for my $r (@rs) {
        my @d = @{ ($r->{json} || {})->{data} || [] };
        $jobs{ join ',', map { $_->{id} // '' } @d }++;
    }
    is(scalar(keys %jobs), 1, '50 webhooks: all answers name the same job list');
    my ($jl) = keys %jobs;
    is($jl, $calls[0]{job}, '50 webhooks: that is the single job of the call');
}

###########################################################################
# window timing: 1500 ms

{
    my ($id) = ids_of(3000, 1);
    my $t0 = Time::HiRes::time();
    my $r = $t->post_json('/window1500', hook($id));
    is($r->{status}, 202, 'window: 202');
    ok($r->{elapsed} < 1, "window: wait none answers at once ($r->{elapsed} s)");
    $accepted{$id} = 1 if $r->{status} == 202;

    Time::HiRes::sleep(0.7 - (Time::HiRes::time() - $t0)) if Time::HiRes::time() - $t0 < 0.7;
    is(scalar($t->calls_for($id)), 0, 'window: nothing sent after 0.7 s');

    ok($t->wait_published(2.5 - (Time::HiRes::time() - $t0), $id),
       'window: sent by 2.5 s');
    my ($c) = $t->calls_for($id);
    if ($c) {
        my $dt = $c->{t} - $t0;
        ok($dt >= 1.4 && $dt < 2.5, sprintf('window: call %.3f s after the webhook', $dt));
    } else {
        fail('window: call timing');
    }
}

###########################################################################
# size trigger: 5 webhooks with batch size 5 and a 10 s window

{
    my @ids = ids_of(4000, 5);
    my $t0 = Time::HiRes::time();
    for my $id (@ids) {
        my $r = $t->post_json('/size5', hook($id));
        is($r->{status}, 202, "size: webhook $id answered 202");
        $accepted{$id} = 1 if $r->{status} == 202;
    }
    ok($t->wait_published(2, @ids), 'size: a full batch is sent at once');
    my @calls = $t->calls_for(@ids);
    is(scalar @calls, 1, 'size: one call');
    is_deeply([sort @{ $calls[0]{ids} || [] }], [sort @ids], 'size: with the 5 ids');
    ok(@calls && $calls[0]{t} - $t0 < 2,
       sprintf('size: sent %.3f s after the first webhook, well before the window',
               @calls ? $calls[0]{t} - $t0 : -1));
}

# 12 ids, batch size 5: 5, 5 at once, 2 after the 1 s window
{
    my @ids = ids_of(5000, 12);
    my $t0 = Time::HiRes::time();
    my $r = $t->post_json('/size5short', ids_body(@ids));
    is($r->{status}, 202, 'size 12: 202');
    is(($r->{json} || {})->{meta}{records}, 12, 'size 12: meta.records 12');
    $accepted{$_} = 1 for $r->{status} == 202 ? @ids : ();

    ok($t->wait_published(3, @ids), 'size 12: all sent');
    my @calls = $t->calls_for(@ids);
    is_deeply([map { scalar @{ $_->{ids} } } @calls], [5, 5, 2], 'size 12: calls of 5, 5, 2');
    if (@calls == 3) {
        ok($calls[1]{t} - $t0 < 0.8,
           sprintf('size 12: full batches at once (%.3f s)', $calls[1]{t} - $t0));
        ok($calls[2]{t} - $t0 >= 0.9,
           sprintf('size 12: last batch after its window (%.3f s)', $calls[2]{t} - $t0));
        my %union = map { $_ => 1 } map { @{ $_->{ids} } } @calls;
        is(scalar(keys %union), 12, 'size 12: 12 distinct ids');
    } else {
        fail('size 12: call timing') for 1 .. 3;
    }
}

###########################################################################
# two locations never share a call

{
    my @a = ids_of(6000, 5);
    my @b = ids_of(6100, 5);
    my @reqs;
    for my $k (0 .. 4) {
        push @reqs, post_req('/a', hook($a[$k])), post_req('/b', hook($b[$k]));
    }
    my @rs = $t->parallel_requests(\@reqs);
    is(scalar(grep { $_->{status} == 202 } @rs), 10, 'targets: 10 webhooks answered 202');
    for my $k (0 .. $#rs) {
        my $id = $k % 2 ? $b[$k >> 1] : $a[$k >> 1];
        $accepted{$id} = 1 if $rs[$k]{status} == 202;
    }

    ok($t->wait_published(4, @a, @b), 'targets: all ids sent');
    my %isa = map { $_ => 1 } @a;
    my %isb = map { $_ => 1 } @b;
    my @calls = $t->calls_for(@a, @b);
    my @mixed = grep {
        my @i = @{ $_->{ids} };
        (grep { $isa{$_} } @i) && (grep { $isb{$_} } @i)
    } @calls;
    is(scalar @mixed, 0, 'targets: no call mixes the two locations');
    is(scalar @calls, 2, 'targets: one call per location');
    is_deeply([sort map { @{ $_->{ids} } } @calls], [sort @a, @b],
              'targets: each id sent once');
}

###########################################################################
# environments: records of different environments never share a call

{
    my @main = ids_of(6500, 3);
    my @sand = ids_of(6600, 3);
    my @reqs = (
        (map { post_req('/env', hook($_)) } @main),
        (map { post_req('/env', hook($_, environment => 'sandbox-1',
                                        is_environment_primary => 0)) } @sand),
    );
    my @rs = $t->parallel_requests(\@reqs);
    is(scalar(grep { $_->{status} == 202 } @rs), 6, 'env: 6 webhooks answered 202');
    my @all = (@main, @sand);
    for my $k (0 .. $#rs) { $accepted{ $all[$k] } = 1 if $rs[$k]{status} == 202 }

    my @calls = $t->calls_for(@all);
    is(scalar @calls, 2, 'env: two calls');
    my ($cm) = grep { !defined $_->{env} } @calls;
    my ($cs) = grep { ($_->{env} // '') eq 'sandbox-1' } @calls;
    is_deeply([sort @{ $cm ? $cm->{ids} : [] }], [sort @main],
              'env: primary records in a call without X-Environment');
    is_deeply([sort @{ $cs ? $cs->{ids} : [] }], [sort @sand],
              'env: sandbox records in a call with X-Environment: sandbox-1');
}

###########################################################################
# the promise: every accepted id reached the mock with a 202, or was given up

$t->wait_published(3, sort keys %accepted);
$t->promise_ok('one worker', sort keys %accepted);

###########################################################################
# two workers: every webhook still published

{
    my $t2 = DatoTest->with_mock(workers => 2, server => <<'EOF');
        location /hook {
            dato_publish;
            dato_publish_wait job;
            dato_batch_window 300ms;
        }
EOF

    my @ids = ids_of(7000, 60);
    my @rs = $t2->parallel_requests([ map { post_req('/hook', hook($_)) } @ids ]);
    is(scalar(grep { $_->{status} == 202 } @rs), 60, '2 workers: 60 webhooks answered 202')
        or diag join "\n", map { "$_->{status} " . ($_->{error} // $_->{body} // '') } @rs;
    my %acc2;
    for my $k (0 .. $#rs) { $acc2{ $ids[$k] } = 1 if $rs[$k]{status} == 202 }

    my @calls = $t2->calls_for(@ids);
    my %union = map { $_ => 1 } map { @{ $_->{ids} } } grep { $_->{status} == 202 } @calls;
    is_deeply([sort keys %union], [sort @ids], '2 workers: union of the calls is the 60 ids');
    ok(@calls >= 1 && @calls <= 4, '2 workers: ' . scalar(@calls) . ' calls (batched per worker)');

    # each answer's job is one of the mock's jobs for that record
    my $bad = 0;
    for my $k (0 .. $#rs) {
        my $j = eval { DatoTest::decode_json($rs[$k]{body}) } || {};
        my @jobs = map { $_->{id} } @{ $j->{data} || [] };
        my %mj = map { ($_->{job} // '') => 1 }
                 grep { grep { $_ eq $ids[$k] } @{ $_->{ids} } } @calls;
        $bad++ unless @jobs == 1 && $mj{ $jobs[0] };
    }
    is($bad, 0, '2 workers: every answer names the job that carries its record');

    $t2->wait_published(3, sort keys %acc2);
    $t2->promise_ok('two workers', sort keys %acc2);
    $t2->done;
}

$t->done;
done_testing;
