package DatoSign;

# A Standard Webhooks signer of our own, written from the specification
# (standard-webhooks/standard-webhooks, spec/standard-webhooks.md): the
# signed content is "<webhook-id>.<webhook-timestamp>.<body>", the key the
# base64-decoded part of a "whsec_" secret, the MAC HMAC-SHA256, and the
# header a space-separated list of "v1,<base64 MAC>".  Core Perl only.
#
#   my $secret  = whsec(24);                    # a new random secret
#   my %headers = sign_headers($secret, $body, id => 'msg_1', ts => time);
#   my $mac     = sign_mac($secret, $id, $ts, $body);   # the base64 MAC

use strict;
use warnings;

use Digest::SHA qw(hmac_sha256);
use MIME::Base64 qw(encode_base64 decode_base64);
use Exporter 'import';

our @EXPORT = qw(whsec whsec_key sign_mac sign_headers);


# a secret of $n random bytes, as senders hand them out
sub whsec {
    my ($n) = @_;
    my $raw = join '', map { chr int rand 256 } 1 .. ($n // 24);
    return 'whsec_' . encode_base64($raw, '');
}

# the raw key of a secret
sub whsec_key {
    my ($secret) = @_;
    (my $b64 = $secret) =~ s/^whsec_//;
    return decode_base64($b64);
}

sub sign_mac {
    my ($secret, $id, $ts, $body) = @_;
    return encode_base64(hmac_sha256("$id.$ts.$body", whsec_key($secret)),
                         '');
}

# the three headers, for one or more secrets (a sender that rotates signs
# with both); extra => [...] adds entries as they are
sub sign_headers {
    my ($secrets, $body, %o) = @_;
    my $id = $o{id} // 'msg_' . join '', map { ('a'..'z')[rand 26] } 1..16;
    my $ts = $o{ts} // time;
    my @s  = ref $secrets ? @$secrets : ($secrets);
    my @sig = map { 'v1,' . sign_mac($_, $id, $ts, $body) } @s;
    push @sig, @{ $o{extra} } if $o{extra};
    return ('webhook-id' => $id, 'webhook-timestamp' => $ts,
            'webhook-signature' => join ' ', @sig);
}

1;
