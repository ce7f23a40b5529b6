package org.fhirbulk;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.channels.Channels;
import java.util.ArrayList;
import java.util.Base64;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import org.apache.arrow.vector.BigIntVector;
import org.apache.arrow.vector.BitVector;
import org.apache.arrow.vector.FieldVector;
import org.apache.arrow.vector.Float4Vector;
import org.apache.arrow.vector.Float8Vector;
import org.apache.arrow.vector.IntVector;
import org.apache.arrow.vector.VarCharVector;
import org.apache.arrow.vector.VectorSchemaRoot;
import org.apache.arrow.vector.complex.ListVector;
import org.apache.arrow.vector.complex.StructVector;
import org.apache.arrow.vector.ipc.WriteChannel;
import org.apache.arrow.vector.ipc.message.MessageSerializer;
import org.apache.arrow.vector.types.FloatingPointPrecision;
import org.apache.arrow.vector.types.pojo.ArrowType;
import org.apache.arrow.vector.types.pojo.Field;
import org.apache.arrow.vector.types.pojo.Schema;
import org.apache.parquet.conf.ParquetConfiguration;
import org.apache.parquet.hadoop.api.WriteSupport;
import org.apache.parquet.io.api.Binary;
import org.apache.parquet.io.api.RecordConsumer;
import org.apache.parquet.schema.GroupType;
import org.apache.parquet.schema.LogicalTypeAnnotation;
import org.apache.parquet.schema.MessageType;
import org.apache.parquet.schema.PrimitiveType.PrimitiveTypeName;
import org.apache.parquet.schema.Type;
import org.apache.parquet.schema.Type.Repetition;
import org.apache.parquet.schema.Types;

/**
 * parquet-java's WriteSupport for the rows of Arrow batches of one schema (FhirBulkParquet):
 * {@link #setBatch} binds a batch, then {@code write(row)} writes its rows one by one, walking
 * the vectors (no row objects). The Parquet schema is the Arrow schema's: utf8 as
 * {@code binary (STRING)}, bool, int32/int64, float/double, structs as groups, lists as the
 * standard three-level {@code LIST} ({@code list} / {@code element}); nullable fields optional.
 * A struct without fields (Parquet has no empty group) is left out. The Arrow schema itself goes
 * into the file's key-value metadata as {@code ARROW:schema} (what Arrow C++ / pyarrow write), so
 * Arrow readers get the field metadata ({@code fhir.type=decimal}) and the schema metadata
 * ({@code fhir.resourceType}) back; {@code fhir.resourceType} is also a key of its own.
 */
final class ArrowWriteSupport extends WriteSupport<Integer> {
    private final Schema schema;
    private final MessageType messageType;
    private final Map<String, String> metadata = new HashMap<>();
    private RecordConsumer consumer;
    private List<Writer> columns = List.of();

    ArrowWriteSupport(Schema schema) {
        this.schema = schema;
        List<Type> fields = new ArrayList<>();
        for (Field f : schema.getFields()) {
            Type t = parquetType(f, f.getName());
            if (t != null) {
                fields.add(t);
            }
        }
        this.messageType = new MessageType("schema", fields);
        metadata.put("ARROW:schema", serialize(schema));
        String type = schema.getCustomMetadata() == null ? null : schema.getCustomMetadata().get("fhir.resourceType");
        if (type != null) {
            metadata.put("fhir.resourceType", type);
        }
    }

    MessageType messageType() {
        return messageType;
    }

    Schema arrowSchema() {
        return schema;
    }

    // ---- the schema ---------------------------------------------------------------------------

    /** The Parquet type of an Arrow field, or null for a struct that has no field to store. */
    static Type parquetType(Field f, String name) {
        Repetition rep = f.isNullable() ? Repetition.OPTIONAL : Repetition.REQUIRED;
        ArrowType t = f.getType();
        switch (t.getTypeID()) {
            case Utf8:
                return Types.primitive(PrimitiveTypeName.BINARY, rep).as(LogicalTypeAnnotation.stringType()).named(name);
            case Bool:
                return Types.primitive(PrimitiveTypeName.BOOLEAN, rep).named(name);
            case Int: {
                ArrowType.Int it = (ArrowType.Int) t;
                if (it.getBitWidth() == 32) {
                    return Types.primitive(PrimitiveTypeName.INT32, rep)
                            .as(LogicalTypeAnnotation.intType(32, it.getIsSigned())).named(name);
                }
                if (it.getBitWidth() == 64) {
                    return Types.primitive(PrimitiveTypeName.INT64, rep)
                            .as(LogicalTypeAnnotation.intType(64, it.getIsSigned())).named(name);
                }
                break;
            }
            case FloatingPoint: {
                FloatingPointPrecision p = ((ArrowType.FloatingPoint) t).getPrecision();
                if (p == FloatingPointPrecision.DOUBLE) {
                    return Types.primitive(PrimitiveTypeName.DOUBLE, rep).named(name);
                }
                if (p == FloatingPointPrecision.SINGLE) {
                    return Types.primitive(PrimitiveTypeName.FLOAT, rep).named(name);
                }
                break;
            }
            case Struct: {
                List<Type> children = new ArrayList<>();
                for (Field c : f.getChildren()) {
                    Type ct = parquetType(c, c.getName());
                    if (ct != null) {
                        children.add(ct);
                    }
                }
                return children.isEmpty() ? null : new GroupType(rep, name, children);
            }
            case List: {
                Field child = f.getChildren().get(0);
                Type element = parquetType(child, "element");
                if (element == null) {
                    return null;
                }
                return Types.buildGroup(rep).as(LogicalTypeAnnotation.listType())
                        .addField(Types.repeatedGroup().addField(element).named("list"))
                        .named(name);
            }
            default:
                break;
        }
        throw new UnsupportedOperationException("fhirbulk: no Parquet type for the Arrow type " + t
                + " of field " + f.getName());
    }

    private static String serialize(Schema schema) {
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        try {
            MessageSerializer.serialize(new WriteChannel(Channels.newChannel(out)), schema);
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
        return Base64.getEncoder().encodeToString(out.toByteArray());
    }

    // ---- WriteSupport -------------------------------------------------------------------------

    @Override
    public WriteContext init(ParquetConfiguration configuration) {
        return new WriteContext(messageType, metadata);
    }

    @Override
    public WriteContext init(org.apache.hadoop.conf.Configuration configuration) {
        return new WriteContext(messageType, metadata);
    }

    @Override
    public String getName() {
        return "fhirbulk-arrow";
    }

    @Override
    public void prepareForWrite(RecordConsumer recordConsumer) {
        this.consumer = recordConsumer;
    }

    /** Binds the batch whose rows the next {@code write} calls write (its schema is this one's). */
    void setBatch(VectorSchemaRoot root) {
        List<Writer> out = new ArrayList<>();
        int index = 0;
        for (FieldVector v : root.getFieldVectors()) {
            Writer w = writer(v, v.getField().getName(), index);
            if (w != null) {
                out.add(w);
                index++;
            }
        }
        this.columns = out;
    }

    @Override
    public void write(Integer row) {
        RecordConsumer rc = consumer;
        int i = row;
        rc.startMessage();
        for (Writer w : columns) {
            w.field(rc, i);
        }
        rc.endMessage();
    }

    // ---- writers over the vectors -------------------------------------------------------------

    /** Writes one field of a row: nothing when null, else startField, the value, endField. */
    abstract static class Writer {
        final String name;
        final int index;

        Writer(String name, int index) {
            this.name = name;
            this.index = index;
        }

        abstract boolean isNull(int i);

        abstract void value(RecordConsumer rc, int i);

        final void field(RecordConsumer rc, int i) {
            if (isNull(i)) {
                return;
            }
            rc.startField(name, index);
            value(rc, i);
            rc.endField(name, index);
        }
    }

    /** The writer of a vector, or null for a struct with nothing stored (see parquetType). */
    static Writer writer(FieldVector v, String name, int index) {
        if (v instanceof VarCharVector s) {
            return new Writer(name, index) {
                boolean isNull(int i) { return s.isNull(i); }
                // A copy: the dictionary and the statistics keep values past this batch.
                void value(RecordConsumer rc, int i) { rc.addBinary(Binary.fromConstantByteArray(s.get(i))); }
            };
        }
        if (v instanceof BitVector b) {
            return new Writer(name, index) {
                boolean isNull(int i) { return b.isNull(i); }
                void value(RecordConsumer rc, int i) { rc.addBoolean(b.get(i) != 0); }
            };
        }
        if (v instanceof IntVector n) {
            return new Writer(name, index) {
                boolean isNull(int i) { return n.isNull(i); }
                void value(RecordConsumer rc, int i) { rc.addInteger(n.get(i)); }
            };
        }
        if (v instanceof BigIntVector n) {
            return new Writer(name, index) {
                boolean isNull(int i) { return n.isNull(i); }
                void value(RecordConsumer rc, int i) { rc.addLong(n.get(i)); }
            };
        }
        if (v instanceof Float8Vector n) {
            return new Writer(name, index) {
                boolean isNull(int i) { return n.isNull(i); }
                void value(RecordConsumer rc, int i) { rc.addDouble(n.get(i)); }
            };
        }
        if (v instanceof Float4Vector n) {
            return new Writer(name, index) {
                boolean isNull(int i) { return n.isNull(i); }
                void value(RecordConsumer rc, int i) { rc.addFloat(n.get(i)); }
            };
        }
        if (v instanceof StructVector s) {
            List<Writer> children = new ArrayList<>();
            int k = 0;
            for (FieldVector c : s.getChildrenFromFields()) {
                Writer w = writer(c, c.getField().getName(), k);
                if (w != null) {
                    children.add(w);
                    k++;
                }
            }
            if (children.isEmpty()) {
                return null;
            }
            Writer[] cs = children.toArray(new Writer[0]);
            return new Writer(name, index) {
                boolean isNull(int i) { return s.isNull(i); }
                void value(RecordConsumer rc, int i) {
                    rc.startGroup();
                    for (Writer w : cs) {
                        w.field(rc, i);
                    }
                    rc.endGroup();
                }
            };
        }
        if (v instanceof ListVector l) {
            Writer element = writer(l.getDataVector(), "element", 0);
            if (element == null) {
                return null;
            }
            return new Writer(name, index) {
                boolean isNull(int i) { return l.isNull(i); }
                void value(RecordConsumer rc, int i) {
                    rc.startGroup();
                    int start = l.getElementStartIndex(i);
                    int end = l.getElementEndIndex(i);
                    if (end > start) {
                        rc.startField("list", 0);
                        for (int j = start; j < end; j++) {
                            rc.startGroup();
                            element.field(rc, j);
                            rc.endGroup();
                        }
                        rc.endField("list", 0);
                    }
                    rc.endGroup();
                }
            };
        }
        throw new UnsupportedOperationException("fhirbulk: no Parquet writer for the Arrow vector "
                + v.getClass().getSimpleName() + " of field " + name);
    }
}
