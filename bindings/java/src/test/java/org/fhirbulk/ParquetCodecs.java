package org.fhirbulk;

import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.util.zip.GZIPInputStream;
import java.util.zip.GZIPOutputStream;
import org.apache.parquet.bytes.BytesInput;
import org.apache.parquet.compression.CompressionCodecFactory;
import org.apache.parquet.hadoop.metadata.CompressionCodecName;

/**
 * Page codecs for reading the datasets back with parquet-java in the tests, without Hadoop's
 * codecs: parquet-java's own CodecFactory builds Hadoop codecs (and a Hadoop Configuration) even
 * for Snappy and ZSTD. Snappy and ZSTD come from snappy-java and zstd-jni (parquet-hadoop's own
 * dependencies), GZIP from the JDK.
 */
final class ParquetCodecs implements CompressionCodecFactory {
    /** ZSTD's level (as parquet-java's default). */
    static final int ZSTD_LEVEL = 3;

    static boolean supports(CompressionCodecName codec) {
        return switch (codec) {
            case UNCOMPRESSED, SNAPPY, ZSTD, GZIP -> true;
            default -> false;
        };
    }

    @Override
    public BytesInputCompressor getCompressor(CompressionCodecName codec) {
        if (!supports(codec)) {
            throw new IllegalArgumentException("fhirbulk: Parquet compression " + codec
                    + " is not supported (UNCOMPRESSED, SNAPPY, ZSTD, GZIP are)");
        }
        return new BytesInputCompressor() {
            @Override
            public BytesInput compress(BytesInput in) throws IOException {
                byte[] b = in.toByteArray();
                return switch (codec) {
                    case SNAPPY -> BytesInput.from(org.xerial.snappy.Snappy.compress(b));
                    case ZSTD -> BytesInput.from(com.github.luben.zstd.Zstd.compress(b, ZSTD_LEVEL));
                    case GZIP -> BytesInput.from(gzip(b));
                    default -> BytesInput.from(b);
                };
            }

            @Override
            public CompressionCodecName getCodecName() {
                return codec;
            }

            @Override
            public void release() {}
        };
    }

    @Override
    public BytesInputDecompressor getDecompressor(CompressionCodecName codec) {
        if (!supports(codec)) {
            throw new IllegalArgumentException("fhirbulk: Parquet compression " + codec + " is not supported");
        }
        return new BytesInputDecompressor() {
            @Override
            public BytesInput decompress(BytesInput in, int uncompressedSize) throws IOException {
                byte[] b = in.toByteArray();
                byte[] out = switch (codec) {
                    case SNAPPY -> org.xerial.snappy.Snappy.uncompress(b);
                    case ZSTD -> com.github.luben.zstd.Zstd.decompress(b, uncompressedSize);
                    case GZIP -> new GZIPInputStream(new ByteArrayInputStream(b)).readAllBytes();
                    default -> b;
                };
                if (out.length != uncompressedSize) {
                    throw new IOException("fhirbulk: " + codec + " page of " + out.length + " bytes, "
                            + uncompressedSize + " expected");
                }
                return BytesInput.from(out);
            }

            @Override
            public void decompress(ByteBuffer in, int compressedSize, ByteBuffer out, int uncompressedSize)
                    throws IOException {
                byte[] b = new byte[compressedSize];
                in.get(b);
                out.put(decompress(BytesInput.from(b), uncompressedSize).toByteArray());
            }

            @Override
            public void release() {}
        };
    }

    @Override
    public void release() {}

    private static byte[] gzip(byte[] b) throws IOException {
        ByteArrayOutputStream out = new ByteArrayOutputStream(b.length / 4 + 64);
        try (GZIPOutputStream z = new GZIPOutputStream(out)) {
            z.write(b);
        }
        return out.toByteArray();
    }
}
